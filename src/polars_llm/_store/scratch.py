"""Scratch databases for ``cache=None``: in-memory DuckDB connections, migrated once and reused.

Opening an in-memory database and applying the schema costs tens of milliseconds, more than a small
call's requests at low latency. A closed scratch store is emptied and kept (at most :data:`KEEP` of
them); the next ``Store.open(None)`` takes it instead of starting again. Nothing of a run survives into
the next: every table but ``schema_version`` is emptied, and a store that grew large is closed instead
(so its memory goes back).
"""

from __future__ import annotations

import threading
from typing import Final

import duckdb

from . import migrations as _migrations

__all__ = ["KEEP", "give_back", "take"]

KEEP: Final = 2
MAX_ROWS: Final = 100_000  # a scratch store holding more than this is closed, not kept

_lock = threading.Lock()
_idle: list[duckdb.DuckDBPyConnection] = []


def take() -> tuple[duckdb.DuckDBPyConnection, int]:
    """An empty in-memory database at the current schema version, and that version."""
    with _lock:
        if _idle:
            return _idle.pop(), _migrations.CURRENT_VERSION
    con = duckdb.connect(":memory:")
    return con, _migrations.migrate(con, fresh=True)


def give_back(con: duckdb.DuckDBPyConnection, version: int, *, written: bool = True) -> None:
    """Empty ``con`` (nothing to do when nothing was ``written``) and keep it for the next
    :func:`take`, or close it."""
    try:
        if version != _migrations.CURRENT_VERSION or len(_idle) >= KEEP:
            raise LookupError
        if written:
            if con.execute("SELECT count(*) FROM requests").fetchall()[0][0] > MAX_ROWS:
                raise LookupError
            for table in sorted(_migrations.user_tables(con) - {"schema_version"}):
                con.execute(f'DELETE FROM "{table}"')
    except (LookupError, duckdb.Error):
        con.close()
        return
    with _lock:
        if len(_idle) < KEEP:
            _idle.append(con)
            return
    con.close()
