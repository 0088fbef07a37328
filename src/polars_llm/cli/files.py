"""Files in and out, in bounded chunks: the out-of-core half of ``polars-llm run``.

:func:`read_chunks` streams a Parquet/CSV/NDJSON file as DataFrames of about ``rows`` rows (Polars'
streaming engine, ``collect_batches``); :class:`ChunkWriter` appends DataFrames to a Parquet (one row
group per chunk, through pyarrow), CSV (the header once) or NDJSON file. Memory is O(chunk), whatever the
file's size.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> pl.DataFrame({"q": [str(i) for i in range(10)]}).write_parquet(d / "in.parquet")
>>> with ChunkWriter(d / "out.csv", "csv") as out:
...     for chunk in read_chunks(pl.scan_parquet(d / "in.parquet"), rows=4):
...         out.write(chunk.with_columns(n=pl.col("q").str.len_chars()))
>>> pl.read_csv(d / "out.csv").height, out.rows
(10, 10)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self

import polars as pl

__all__ = ["ChunkWriter", "FileFormat", "read_chunks"]

FileFormat = Literal["csv", "parquet", "ndjson"]


def read_chunks(lf: pl.LazyFrame, *, rows: int) -> Iterator[pl.DataFrame]:
    """``lf`` as DataFrames of about ``rows`` rows each, in order, streamed (never all in memory); an input
    without rows gives one empty chunk, so its columns still reach the output."""
    empty = True
    for chunk in lf.collect_batches(chunk_size=rows, maintain_order=True):
        if chunk.height:
            empty = False
            yield chunk
    if empty:
        yield lf.head(0).collect()


class ChunkWriter:
    """Append DataFrames (one schema) to a file of ``fmt``; nothing is written for no chunk at all."""

    def __init__(self, path: Path, fmt: FileFormat) -> None:
        self.path = path
        self.fmt = fmt
        self.rows = 0
        self._parquet: Any = None
        self._file: IO[bytes] | None = None
        self._schema: pl.Schema | None = None

    def write(self, chunk: pl.DataFrame) -> None:
        if self._schema is None:
            self._schema = chunk.schema
        elif chunk.schema != self._schema:
            chunk = chunk.cast(dict(self._schema))  # type: ignore[arg-type]  # an all-null chunk's Null dtype
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            table = chunk.to_arrow()
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.path, table.schema)
            self._parquet.write_table(table)
        else:
            first = self._file is None
            if self._file is None:
                self._file = self.path.open("wb")
            if self.fmt == "csv":
                chunk.write_csv(self._file, include_header=first)
            else:
                chunk.write_ndjson(self._file)
        self.rows += chunk.height

    def close(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
