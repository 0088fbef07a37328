"""Files in and out: their formats, the checks every command makes on them, and writing an output whole.

:func:`file_format` tells a file's format from its extension; :func:`open_input` scans the input lazily
after the checks the commands share (the column exists and holds text, the output is another file, the
added columns are free); :func:`write_output` (a lazy frame) and :func:`stream_output` (chunks) write to
a temporary file beside the target, renamed when complete, so an interrupted run never leaves a
half-written file; :func:`print_summary` says what was written.

In bounded chunks, the out-of-core half of ``polars-llm run``: :func:`read_chunks` streams a
Parquet/CSV/NDJSON file as DataFrames of about ``rows`` rows (Polars' streaming engine,
``collect_batches``); :class:`ChunkWriter` appends DataFrames to a Parquet (one row group per chunk,
through pyarrow), CSV (the header once) or NDJSON file. Memory is O(chunk), whatever the file's size.

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

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Literal, Self

import polars as pl

from .._config import MapConfig
from ..exceptions import BudgetExceededError
from .errors import CLIError

__all__ = [
    "ChunkWriter",
    "FileFormat",
    "file_format",
    "json_text",
    "open_input",
    "print_summary",
    "read_chunks",
    "scan_input",
    "stream_output",
    "write_output",
]

FileFormat = Literal["csv", "parquet", "ndjson"]
_EXTENSIONS: Final[dict[str, FileFormat]] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "ndjson",
    ".ndjson": "ndjson",
}
_STRINGY: Final = (pl.String, pl.Categorical, pl.Null)


def file_format(path: Path, what: str) -> FileFormat:
    """The format of ``path`` from its extension.

    >>> file_format(Path("a.JSONL"), "input")
    'ndjson'
    """
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(_EXTENSIONS))
        raise CLIError(
            f"cannot tell the {what} format of {str(path)!r} from its extension (use one of {known})"
        )
    return fmt


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


def scan_input(path: Path, fmt: FileFormat, column: str) -> pl.LazyFrame:
    if not path.exists():
        raise CLIError(f"cannot read input {str(path)!r}: no such file")
    if not path.is_file():
        raise CLIError(f"cannot read input {str(path)!r}: not a file")
    try:
        if fmt == "csv":
            names = pl.scan_csv(path).collect_schema().names()
            overrides = {column: pl.String} if column in names else None
            lf = pl.scan_csv(path, schema_overrides=overrides)
        elif fmt == "parquet":
            lf = pl.scan_parquet(path)
        else:
            lf = pl.scan_ndjson(path)
        schema = lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CLIError(f"cannot read input {str(path)!r} as {fmt}: {first}") from None
    if column not in schema:
        shown = ", ".join(schema.names()[:20]) or "(none)"
        raise CLIError(f"input {str(path)!r} has no column {column!r}; its columns are: {shown}")
    dtype = schema[column]
    if not (dtype in _STRINGY or isinstance(dtype, pl.Enum)):
        raise CLIError(f"the prompt column {column!r} has dtype {dtype}; it must hold text")
    return lf


def _sink(lf: pl.LazyFrame, fmt: FileFormat, target: Path) -> None:
    if fmt == "csv":
        lf.sink_csv(target)
    elif fmt == "parquet":
        lf.sink_parquet(target)
    else:
        lf.sink_ndjson(target)


def _read_statuses(path: Path, fmt: FileFormat, status_column: str) -> dict[str, int]:
    lf = {"csv": pl.scan_csv, "parquet": pl.scan_parquet, "ndjson": pl.scan_ndjson}[fmt](path)
    counts = lf.group_by(status_column).len().sort(status_column).collect()
    return {str(k): int(n) for k, n in counts.iter_rows()}


def open_input(args: argparse.Namespace, extra_columns: Sequence[str] = ()) -> tuple[pl.LazyFrame, Path]:
    """The input scanned lazily and the output path, after the checks every command shares."""
    source, target = Path(args.input), Path(args.output)
    fmt_in = file_format(source, "input")
    file_format(target, "output")
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise CLIError("--output must differ from INPUT")
    if args.result_column == args.status_column:
        raise CLIError("--result-column and --status-column must differ")
    lf = scan_input(source, fmt_in, args.column)
    names = lf.collect_schema().names()
    missing = [c for c in extra_columns if c not in names]
    if missing:
        raise CLIError(
            f"input {str(source)!r} has no column(s) {', '.join(map(repr, missing))}; its columns are: "
            + ", ".join(names[:20])
        )
    taken = {args.result_column, args.status_column} & set(names)
    if taken:
        raise CLIError(
            f"the input already has column(s) {', '.join(sorted(taken))}; choose others with "
            "--result-column / --status-column"
        )
    return lf, target


def json_text(column: str) -> pl.Expr:
    """A Struct column as JSON text for CSV; a null (a failed row) stays empty, not the text ``null``.

    >>> pl.DataFrame({"r": [{"a": 1}, None]}).select(json_text("r"))["r"].to_list()
    ['{"a":1}', None]
    """
    col = pl.col(column)
    return pl.when(col.is_not_null()).then(col.struct.json_encode()).alias(column)


def write_output(out: pl.LazyFrame, target: Path, status_column: str, cfg: MapConfig) -> None:
    """Stream ``out`` to a temporary file beside ``target``, rename it when complete; print a summary."""
    fmt_out = file_format(target, "output")
    target = target.expanduser().absolute()
    with _whole(target) as partial:
        _sink(out, fmt_out, partial)
    print_summary(target, fmt_out, status_column, cfg)


def print_summary(target: Path, fmt_out: FileFormat, status_column: str, cfg: MapConfig) -> None:
    counts = _read_statuses(target, fmt_out, status_column) if target.stat().st_size else {}
    total = sum(counts.values())
    shown = " ".join(f"{k}={v}" for k, v in counts.items()) or "no rows"
    print(f"wrote {total} rows to {target} ({shown}); cache: {cfg.cache}", file=sys.stderr)
    if counts.get("submitted"):
        print(
            f"{counts['submitted']} rows are in batches running at the provider: run the same command "
            "again later to collect them (`polars-llm batches` lists them)",
            file=sys.stderr,
        )


@contextlib.contextmanager
def _whole(target: Path) -> Iterator[Path]:
    """A temporary path beside ``target`` to write to, renamed to ``target`` when the block completes;
    removed if it raises (no half-written output)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        yield partial
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()


def stream_output(
    chunks: Iterator[pl.DataFrame], target: Path, fmt: FileFormat
) -> BudgetExceededError | None:
    """Write ``chunks`` to a temporary file beside ``target``, renamed when complete. A budget stop still
    writes every row (the unsent ones ``pending``) and is returned; any other error leaves no file."""
    stop: BudgetExceededError | None = None
    with _whole(target) as partial, ChunkWriter(partial, fmt) as writer:
        try:
            for chunk in chunks:
                writer.write(chunk)
        except BudgetExceededError as error:
            stop = error
    return stop
