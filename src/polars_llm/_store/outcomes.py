"""Finished requests and how they are written: :class:`Outcome` and :func:`apply_outcomes`.

Shared by the store's batched writer and the journal's replay, which writes what a killed run received
but had not written yet (:mod:`polars_llm._store.journal`).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import duckdb
import polars as pl
import pyarrow as pa

from .migrations import K64_SQL

__all__ = ["Outcome", "apply_outcomes", "now_us"]


_VECTOR_TYPE: Final = pa.list_(pa.float32())
_BATCH_SCHEMA: Final = pa.schema(
    [
        ("key", pa.string()),
        ("status", pa.string()),
        ("result", pa.string()),
        ("error", pa.string()),
        ("error_kind", pa.string()),
        ("attempts", pa.int32()),
        ("tokens_in", pa.int64()),
        ("tokens_out", pa.int64()),
        ("tokens_reasoning", pa.int64()),
        ("tokens_cached", pa.int64()),
        ("cost", pa.float64()),
        ("finished_at", pa.float64()),
    ]
)

_BATCH_DTYPES: Final = {
    f.name: {pa.string(): pl.String, pa.int32(): pl.Int32, pa.int64(): pl.Int64}.get(f.type, pl.Float64)
    for f in _BATCH_SCHEMA
}


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished request, as the engine hands it to :meth:`Store.write_outcomes`."""

    key: str
    status: str
    attempts: int
    finished_at: float | None
    result: str | None = None
    error: str | None = None
    error_kind: str | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    tokens_reasoning: int | None = None
    tokens_cached: int | None = None
    cost: float | None = None
    embedding: pa.Array | None = None  # an embedding: a length-1 ``list<float>`` slice of its response


def _vectors(outcomes: Sequence[Outcome]) -> pa.Array:
    """The ``embedding`` column of a batch: one ``list<float>`` per outcome (null when it has none)."""
    empty = pa.nulls(1, type=_VECTOR_TYPE)
    parts = [o.embedding if o.embedding is not None else empty for o in outcomes]
    return pa.concat_arrays([p.cast(_VECTOR_TYPE) if p.type != _VECTOR_TYPE else p for p in parts])


_TEXT_FIELDS: Final = frozenset({"key", "status", "result", "error", "error_kind"})
_INT_LIMITS: Final = {
    "attempts": 2**31 - 1,
    "tokens_in": 2**63 - 1,
    "tokens_out": 2**63 - 1,
    "tokens_reasoning": 2**63 - 1,
    "tokens_cached": 2**63 - 1,
}


def _coerce(name: str, value: Any) -> Any:
    """``value`` made storable in column ``name`` (text as text, counts as non-negative ints, or NULL).

    >>> _coerce("result", [{"type": "text", "text": "hi"}]), _coerce("tokens_in", "12"), _coerce("cost", -1)
    ('[{"type": "text", "text": "hi"}]', 12, None)
    """
    if value is None:
        return None
    if name in _TEXT_FIELDS:
        if isinstance(value, str):
            return value
        try:
            return json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            return str(value)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number) or number < 0:
        return None
    if name in _INT_LIMITS:
        return min(int(number), _INT_LIMITS[name])
    return number


def now_us() -> int:
    return int(time.time() * 1_000_000)


def _batch_table(outcomes: Sequence[Outcome]) -> pa.Table:
    """The columns of ``outcomes`` as an Arrow table of :data:`_BATCH_SCHEMA`.

    Built by Polars: pyarrow's own conversion of Python objects imports pandas the first time, when it
    is installed (0.3 s holding the GIL with a bytecode cache, 2.5 s without), in the first write of a
    run. After a SIGINT during a Polars query, Polars raises ``KeyboardInterrupt`` from every call in the
    process until that query ends, and this write is the final flush that must still happen then: off
    the main thread (where no real interrupt is raised) pyarrow builds it instead. A value of the wrong
    type (a provider's odd answer that got this far) is coerced, so no batch-mate is lost.
    """
    columns = {name: [getattr(o, name) for o in outcomes] for name in _BATCH_SCHEMA.names}
    try:
        return pl.DataFrame(columns, schema=_BATCH_DTYPES).to_arrow(compat_level=pl.CompatLevel.oldest())
    except KeyboardInterrupt:
        if threading.current_thread() is threading.main_thread():
            raise
    except (pl.exceptions.PolarsError, TypeError, ValueError, OverflowError):
        pass
    try:
        return pa.table(columns, schema=_BATCH_SCHEMA)
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        coerced = {name: [_coerce(name, getattr(o, name)) for o in outcomes] for name in _BATCH_SCHEMA.names}
        return pa.table(coerced, schema=_BATCH_SCHEMA)


def apply_outcomes(con: duckdb.DuckDBPyConnection, outcomes: Sequence[Outcome]) -> None:
    """Write ``outcomes`` inside the caller's transaction (see :meth:`Store.write_outcomes`)."""
    if not outcomes:
        return
    unique = list({o.key: o for o in outcomes}.values())  # the last outcome wins for a repeated key
    batch = _batch_table(unique)
    vectors = ""
    if any(o.embedding is not None for o in unique):
        batch = batch.append_column("embedding", _vectors(unique))
        vectors = "embedding = b.embedding, "
    now = now_us()
    con.register("_pl_batch", batch)
    try:
        updated = con.execute(
            "UPDATE requests SET status = b.status, result = b.result, error = b.error, "
            f"error_kind = b.error_kind, attempts = requests.attempts + b.attempts, {vectors}"
            "tokens_in = b.tokens_in, tokens_out = b.tokens_out, tokens_reasoning = b.tokens_reasoning, "
            "tokens_cached = b.tokens_cached, cost = b.cost, "
            "updated_at = make_timestamp(?::BIGINT), "
            "finished_at = make_timestamp((b.finished_at * 1000000)::BIGINT) "
            "FROM _pl_batch AS b WHERE requests.key = b.key",
            [now],
        ).fetchall()
        if updated and int(updated[0][0]) == batch.num_rows:
            return  # the usual case: every key was registered (keys are unique, so no second scan)
        # Keys that were never registered (should not happen) are kept rather than lost.
        con.execute(
            "INSERT INTO requests (key, status, result, error, error_kind, attempts, tokens_in, "
            "tokens_out, tokens_reasoning, tokens_cached, cost, created_at, updated_at, finished_at, k64) "
            "SELECT b.key, b.status, b.result, b.error, b.error_kind, b.attempts, b.tokens_in, "
            "b.tokens_out, b.tokens_reasoning, b.tokens_cached, b.cost, make_timestamp(?::BIGINT), "
            "make_timestamp(?::BIGINT), make_timestamp((b.finished_at * 1000000)::BIGINT), "
            f"{K64_SQL.format(key='b.key')} FROM _pl_batch AS b ANTI JOIN requests AS r ON r.key = b.key",
            [now, now],
        )
    finally:
        con.unregister("_pl_batch")
