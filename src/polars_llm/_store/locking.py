"""Opening DuckDB files safely: one lock per file in this process, holders named, foreign files untouched.

DuckDB lets one process hold a file; a second process (or a second connection of this process with other
settings) fails at once. :func:`connect` turns those failures into a :class:`StoreError` naming the file
and the holder; :func:`prepare_file` and :func:`probe` refuse paths that cannot be a cache before DuckDB
writes anything to them.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Final

import duckdb

from ..exceptions import StoreError
from . import migrations as _migrations

__all__ = ["connect", "path_lock", "prepare_file", "probe"]

_LOCK_RE: Final = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")
_DUCKDB_MAGIC: Final = b"DUCK"
_OTHER_PATH: Final = {"the cache": "cache=<other path>"}

_REGISTRY_LOCK = threading.Lock()
_PATH_LOCKS: dict[str, threading.RLock] = {}


def path_lock(path: Path | None) -> threading.RLock:
    if path is None:
        return threading.RLock()
    with _REGISTRY_LOCK:
        return _PATH_LOCKS.setdefault(os.path.realpath(path), threading.RLock())


def _lock_error(path: Path, exc: BaseException, what: str) -> StoreError:
    match = _LOCK_RE.search(str(exc))
    holder = f"{match['exe']} (PID {match['pid']})" if match else "another process"
    return StoreError(
        f"{what} {path} is locked by {holder}: another notebook or process is using it; "
        f"finish or close it (restart that kernel), or pass {_OTHER_PATH.get(what, 'another path')}.",
        path=str(path),
        holder=holder,
    )


def _open_error(path: Path, exc: BaseException, what: str = "the cache") -> StoreError:
    text = str(exc)
    if "Conflicting lock" in text or "Could not set lock" in text:
        return _lock_error(path, exc, what)
    if "not a valid DuckDB database" in text:
        return _migrations.not_ours(path)
    if "different configuration" in text:
        return StoreError(
            f"{what} {path} is already open in this process with other settings (e.g. "
            "duckdb.connect(..., read_only=True) in this notebook): close that connection first "
            "(con.close(), or open it with `with duckdb.connect(...) as con:`)",
            path=str(path),
        )
    other = _OTHER_PATH.get(what, "another path")
    return StoreError(f"cannot open {what} {path}: {text}. Pass {other}.", path=str(path))


def prepare_file(path: Path) -> None:
    """Create the parent directory; refuse paths that cannot be a cache before DuckDB touches them."""
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the cache directory {parent} for {path}: {exc.strerror or exc}. "
            "Pass cache=<other path>.",
            path=str(path),
        ) from None
    if not parent.is_dir():
        raise StoreError(f"cannot use the cache {path}: {parent} is not a directory", path=str(path))
    if path.is_dir():
        raise StoreError(f"the cache path {path} is a directory; pass a file path", path=str(path))
    if not path.exists():
        return
    try:
        with path.open("rb") as fh:
            header = fh.read(12)
    except OSError as exc:
        raise StoreError(f"cannot read the cache {path}: {exc.strerror or exc}", path=str(path)) from None
    if not header:  # an empty file (e.g. from mkstemp) holds nothing: let DuckDB create the database in it
        path.unlink()
        return
    if header[8:12] != _DUCKDB_MAGIC:
        raise _migrations.not_ours(path)


def connect(path: Path, *, read_only: bool, what: str = "the cache") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection to ``path``; a lock held by another process (or any failure) is a StoreError
    naming the file and the holder."""
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.Error as exc:
        raise _open_error(path, exc, what) from None


def probe(path: Path) -> None:
    """Classify an existing file read-only, so a foreign database (and its WAL) is never rewritten."""
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.ConnectionException:
        return  # this process already has it open read-write: it passed the probe then
    except duckdb.Error as exc:
        raise _open_error(path, exc) from None
    try:
        state, _ = _migrations.classify(con)
    finally:
        con.close()
    if state == "foreign":
        raise _migrations.not_ours(path)
