"""Files behind the seed API: database URLs, the results store, teardown.

The seed (``llm_batch_runner``) kept two SQLite files: a progress DB (``.llm_batch_cache/runs.db``) and a
results DB beside it (``runs-results.db``). Here the progress store is the engine's own DuckDB cache
(:class:`polars_llm._store.store.Store`) and the results store is a small DuckDB file with one table::

    results(idx BIGINT, key VARCHAR, prompt VARCHAR, status VARCHAR, result VARCHAR)

rewritten by every ``prompt_map`` call (a snapshot of that call's output, shaped like its
``output_shape``).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Final, Literal

import duckdb
import polars as pl

from .._store.locking import connect
from .._store.store import Store
from ..exceptions import ConfigError, StoreError

__all__ = [
    "DB_URL_DEFAULT",
    "db_path",
    "export_file",
    "export_rows",
    "is_results_store",
    "read_results",
    "remove_db_files",
    "results_path_for",
    "track_active",
    "write_results",
]

DB_URL_DEFAULT: Final = "duckdb:///.llm_batch_cache/runs.duckdb"
_RESULTS_SCHEMA: Final = {
    "idx": pl.Int64,
    "key": pl.String,
    "prompt": pl.String,
    "status": pl.String,
    "result": pl.String,
}
_URL_RE: Final = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>.*)$", re.DOTALL)
_FILE_SCHEMES: Final = ("duckdb", "sqlite", "file")
_MEMORY: Final = ("", ":memory:")

_ACTIVE_LOCK = threading.Lock()
_ACTIVE: Counter[str] = Counter()


def db_path(url: str | os.PathLike[str] | None) -> Path | None:
    """The file behind a database argument; ``None`` means in memory.

    Accepts a path, ``duckdb:///path``, and the seed's SQLAlchemy-style SQLite URLs (their path is used,
    the file itself is DuckDB). Relative paths are relative to the working directory.

    >>> db_path("sqlite+aiosqlite:///my_runs.db").name, db_path("duckdb:///x/runs.duckdb").name
    ('my_runs.db', 'runs.duckdb')
    >>> str(db_path("sqlite:////tmp/abs.db")), db_path("sqlite+aiosqlite:///:memory:")
    ('/tmp/abs.db', None)
    """
    if url is None:
        return None
    if isinstance(url, os.PathLike):
        text = os.fspath(url)
    elif isinstance(url, str):
        text = url
    else:
        raise ConfigError(f"a database must be a path or a URL string, got {type(url).__name__}")
    match = _URL_RE.match(text)
    if match:
        scheme = match["scheme"].lower()
        driver = scheme.split("+", 1)[0]
        if driver not in _FILE_SCHEMES:
            raise ConfigError(
                f"unsupported database URL {_redact(text)!r}: polars_llm keeps its stores in local DuckDB "
                "files; pass a path, 'duckdb:///path' or 'sqlite:///path' (its path is used)"
            )
        rest = match["rest"].split("?", 1)[0]
        if rest.startswith("/"):  # empty host: 'sqlite:///rel.db' -> 'rel.db', 'sqlite:////abs' -> '/abs'
            rest = rest[1:]
        elif "/" in rest and driver != "file":
            raise ConfigError(f"database URL {_redact(text)!r} names a host; only local files are supported")
        text = rest
    if text in _MEMORY:
        return None
    return Path(text).expanduser().absolute()


def _redact(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", url)


def results_path_for(progress: Path | None, explicit: str | os.PathLike[str] | None) -> Path:
    """Where the results store goes: ``explicit`` if given, else ``<stem>-results<ext>`` beside ``progress``.

    >>> results_path_for(Path("/c/runs.duckdb"), None).name
    'runs-results.duckdb'
    """
    if explicit is not None:
        path = db_path(explicit)
        if path is None:
            raise ConfigError("results_db_url cannot be in memory; pass a file path or leave it None")
        if progress is None or path != progress:
            return path
        import warnings

        warnings.warn(
            "results_db_url is the same file as cache_db_url; writing the results beside it instead",
            stacklevel=3,
        )
    if progress is None:
        return Path("results.duckdb").absolute()
    return progress.with_name(f"{progress.stem}-results{progress.suffix or '.duckdb'}")


@contextmanager
def track_active(path: Path | None) -> Iterator[None]:
    """Count the runs of this process using ``path``, so one run's teardown spares another's store."""
    name = os.path.realpath(path) if path is not None else None
    if name is not None:
        with _ACTIVE_LOCK:
            _ACTIVE[name] += 1
    try:
        yield
    finally:
        if name is not None:
            with _ACTIVE_LOCK:
                _ACTIVE[name] -= 1
                if _ACTIVE[name] <= 0:
                    del _ACTIVE[name]


def in_use(path: Path) -> bool:
    with _ACTIVE_LOCK:
        return _ACTIVE.get(os.path.realpath(path), 0) > 0


def remove_db_files(path: Path) -> list[Path]:
    """Delete a DuckDB file with its WAL and temp directory; returns what was removed."""
    removed: list[Path] = []
    for candidate in (path, Path(f"{path}.wal"), Path(f"{path}.tmp")):
        if candidate.is_dir():
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
        elif candidate.exists():
            with suppress(FileNotFoundError):
                candidate.unlink()
            removed.append(candidate)
    return removed


def write_results(path: Path, frame: pl.DataFrame) -> int:
    """Replace the ``results`` table of the store at ``path`` with ``frame`` (one transaction)."""
    data = frame.select(pl.col(c).cast(t) for c, t in _RESULTS_SCHEMA.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    con = connect(path, read_only=False, what="the results store")
    try:
        con.register("_pl_results", data)
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute("CREATE OR REPLACE TABLE results AS SELECT * FROM _pl_results ORDER BY idx")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return data.height


def is_results_store(path: Path) -> bool:
    """True when ``path`` is a DuckDB file holding a ``results`` table and no engine ``requests`` table."""
    if not path.is_file():
        return False
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return False
    try:
        names = {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    finally:
        con.close()
    return "results" in names and "requests" not in names


def read_results(path: Path, *, status: str | None = None) -> pl.DataFrame:
    """The rows of a results store ordered by ``idx`` (only those with ``status`` when given)."""
    con = connect(path, read_only=True, what="the results store")
    try:
        rows = con.sql("SELECT idx, key, prompt, status, result FROM results ORDER BY idx").pl()
        if status is not None:
            rows = rows.filter(pl.col("status") == status)
        return rows.cast(_RESULTS_SCHEMA)  # type: ignore[arg-type]
    finally:
        con.close()


def _check_format(format: str) -> None:
    if format not in ("jsonl", "parquet"):
        raise ConfigError(f"export format must be 'jsonl' or 'parquet', got {format!r}")


def export_rows(
    source: Path, out: str | os.PathLike[str], *, format: Literal["jsonl", "parquet"], status: str | None
) -> int:
    """Write the rows of the results store or progress store at ``source`` to ``out``; returns the count."""
    _check_format(format)
    target = Path(out).expanduser().absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_results_store(source):
        frame = read_results(source, status=status)
        frame.write_ndjson(target) if format == "jsonl" else frame.write_parquet(target)
        return frame.height
    with Store.open(source) as store:
        return store.export(target, format=format, where=f"status = '{status}'" if status else None)


def export_file(
    db: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    *,
    format: Literal["jsonl", "parquet"],
    only_done: bool = True,
) -> tuple[int, Path]:
    """Export the results behind ``db``; returns ``(rows, source file)``.

    ``db`` may name a results store, or a progress store (the default): then the results store beside
    it is exported when it exists (it survives ``teardown=True``), else the progress store's rows.
    """
    _check_format(format)
    path = db_path(db)
    if path is None:
        raise ConfigError("an in-memory database has nothing to export; pass the file a run used")
    candidates = [path] if is_results_store(path) else [results_path_for(path, None), path]
    for source in candidates:
        if source.is_file() and (source == path or is_results_store(source)):
            return export_rows(source, out, format=format, status="done" if only_done else None), source
    raise StoreError(
        f"nothing to export: {' or '.join(str(c) for c in candidates)} does not exist (run prompt_map "
        "first, or pass the database it used)",
        path=str(path),
    )
