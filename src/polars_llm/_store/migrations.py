"""Schema migrations of the DuckDB cache file.

``MIGRATIONS`` is an ordered list of ``(version, step)``; a step is SQL text (one or more statements)
or a callable taking the connection. :func:`migrate` applies every step above the file's recorded
version, each in its own transaction together with the row it adds to ``schema_version``, so a crash
leaves the file at a whole version. A file recording a version above :data:`CURRENT_VERSION` was
written by a newer polars_llm and is refused without being touched.

Never edit a released step: append a new one, and make it idempotent (``IF NOT EXISTS``), so a step
that lands on another branch first can be renumbered without harm.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Literal

import duckdb

from ..exceptions import StoreError

__all__ = ["CURRENT_VERSION", "K64_SQL", "MIGRATIONS", "Migration", "classify", "migrate", "stored_version"]

Step = str | Callable[[duckdb.DuckDBPyConnection], None]
Migration = tuple[int, Step]

_V1: Final = """
CREATE TABLE schema_version (
    version    INTEGER   NOT NULL,
    applied_at TIMESTAMP NOT NULL
);
CREATE TABLE requests (
    key         VARCHAR NOT NULL,
    prompt      VARCHAR,
    base_url    VARCHAR,
    model       VARCHAR,
    system      VARCHAR,
    params      VARCHAR,
    schema_name VARCHAR,
    schema      VARCHAR,
    status      VARCHAR NOT NULL,
    result      VARCHAR,
    error       VARCHAR,
    attempts    INTEGER NOT NULL DEFAULT 0,
    tokens_in   BIGINT,
    tokens_out  BIGINT,
    created_at  TIMESTAMP,
    updated_at  TIMESTAMP,
    finished_at TIMESTAMP
);
"""

_V2: Final = """
ALTER TABLE requests ADD COLUMN IF NOT EXISTS error_kind VARCHAR;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS cost DOUBLE;
"""

# Cost accounting: reasoning and cached prompt tokens per row; the provider's price list, kept with its date.
_V3: Final = """
ALTER TABLE requests ADD COLUMN IF NOT EXISTS tokens_reasoning BIGINT;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS tokens_cached BIGINT;
CREATE TABLE IF NOT EXISTS model_prices (
    base_url   VARCHAR NOT NULL,
    model      VARCHAR NOT NULL,
    price_in   DOUBLE,
    price_out  DOUBLE,
    max_output BIGINT,
    fetched_at TIMESTAMP NOT NULL
);
"""

# Batch mode: the batches submitted to a provider's batch API, and the batch each request was last sent in.
# Idempotent (IF NOT EXISTS) so that branches adding migrations in parallel can be renumbered on merge.
_V4: Final = """
CREATE TABLE IF NOT EXISTS batches (
    batch_id       VARCHAR NOT NULL,
    base_url       VARCHAR,
    model          VARCHAR,
    endpoint       VARCHAR,
    input_file_id  VARCHAR,
    output_file_id VARCHAR,
    error_file_id  VARCHAR,
    status         VARCHAR,
    requests       INTEGER,
    bytes          BIGINT,
    completed      INTEGER,
    failed         INTEGER,
    rows_done      INTEGER,
    rows_failed    INTEGER,
    rows_requeued  INTEGER,
    message        VARCHAR,
    submitted_at   TIMESTAMP,
    checked_at     TIMESTAMP,
    finished_at    TIMESTAMP,
    collected_at   TIMESTAMP
);
ALTER TABLE requests ADD COLUMN IF NOT EXISTS batch_id VARCHAR;
"""

# Struct input and embeddings: the other fields of a struct row (JSON), and the embedding vector.
_V5: Final = """
ALTER TABLE requests ADD COLUMN IF NOT EXISTS input VARCHAR;
ALTER TABLE requests ADD COLUMN IF NOT EXISTS embedding FLOAT[];
"""

# Look-ups by ``k64`` (the key's first 64 bits as an integer): a semi-join on it reads an eighth of what
# one on the 32-character key reads, which decides a streamed rerun's time once the file holds millions
# of rows. The expression is :data:`K64_SQL` (kept equal to the Polars one in ``store.py``).
K64_SQL: Final = (
    "CASE WHEN regexp_full_match(substr({key}, 1, 16), '[0-9a-f]{{16}}') "
    "THEN ('0x' || substr({key}, 1, 16))::UBIGINT ELSE 0 END"
)
_V6: Final = f"""
ALTER TABLE requests ADD COLUMN IF NOT EXISTS k64 UBIGINT;
UPDATE requests SET k64 = {K64_SQL.format(key="key")} WHERE k64 IS NULL;
"""

MIGRATIONS: Final[tuple[Migration, ...]] = (
    (1, _V1), (2, _V2), (3, _V3), (4, _V4), (5, _V5), (6, _V6),
)  # fmt: skip
CURRENT_VERSION: Final = MIGRATIONS[-1][0]

State = Literal["empty", "ours", "foreign"]


def user_tables(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema NOT IN ('information_schema', 'pg_catalog')"
    ).fetchall()
    return {str(row[0]) for row in rows}


def stored_version(con: duckdb.DuckDBPyConnection) -> int:
    """The schema version recorded in the file (0 when nothing was applied yet)."""
    if "schema_version" not in user_tables(con):
        return 0
    rows = con.execute("SELECT max(version) FROM schema_version").fetchall()
    return int(rows[0][0]) if rows and rows[0][0] is not None else 0


def classify(con: duckdb.DuckDBPyConnection) -> tuple[State, int]:
    """``("empty", 0)`` for a database without tables, ``("ours", version)``, or ``("foreign", 0)``."""
    tables = user_tables(con)
    if "schema_version" in tables:
        return "ours", stored_version(con)
    return ("empty" if not tables else "foreign"), 0


def migrate(
    con: duckdb.DuckDBPyConnection,
    *,
    path: Path | None = None,
    target: int = CURRENT_VERSION,
    migrations: Sequence[Migration] = MIGRATIONS,
    fresh: bool = False,
) -> int:
    """Bring the database up to ``target``; returns the version it ends at.

    ``fresh``: a new database no other connection can see (in memory): every step in one transaction,
    without looking first. Raises :class:`StoreError` for a foreign database or one newer than this
    library.
    """
    if fresh:
        return _apply_all(con, target, migrations)
    where = str(path) if path is not None else ":memory:"
    state, version = classify(con)
    if state == "foreign":
        raise not_ours(path)
    known = migrations[-1][0] if migrations else 0
    if version > known:
        raise StoreError(
            f"the cache {where} has schema version {version}, but this polars_llm only knows up to version "
            f"{known}: it was written by a newer polars_llm. Upgrade polars_llm, or pass cache=<other path>.",
            path=str(path) if path is not None else None,
        )
    for step_version, step in migrations:
        if step_version <= version or step_version > target:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            if stored_version(con) >= step_version:  # applied meanwhile by another connection of this process
                con.execute("ROLLBACK")
                continue
            _apply(con, step_version, step)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        version = step_version
    return version


def _apply(con: duckdb.DuckDBPyConnection, step_version: int, step: Step) -> None:
    """One step and its ``schema_version`` row (inside the caller's transaction)."""
    if callable(step):
        step(con)
    else:
        con.execute(step)
    con.execute(
        "INSERT INTO schema_version VALUES (?, make_timestamp(?::BIGINT))",
        [step_version, int(time.time() * 1_000_000)],
    )


def _apply_all(con: duckdb.DuckDBPyConnection, target: int, migrations: Sequence[Migration]) -> int:
    version = 0
    con.execute("BEGIN TRANSACTION")
    try:
        for step_version, step in migrations:
            if step_version > target:
                break
            _apply(con, step_version, step)
            version = step_version
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return version


def not_ours(path: Path | None) -> StoreError:
    return StoreError(
        f"{path} is not a polars_llm cache (it is not a DuckDB file, or it holds other tables and no "
        "schema_version table); it was left untouched. Pass cache=<other path>.",
        path=str(path) if path is not None else None,
    )
