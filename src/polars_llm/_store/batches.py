"""What the store remembers of batch mode: the ``batches`` table and each request's ``batch_id``.

A batch is *live* from the moment it is recorded (right after the provider accepted it) until its
results are collected (``collected_at`` set). A request whose ``batch_id`` names a live batch is never
sent again, online or in batch mode. Every function here is synchronous (call it off the event loop) and
each write is one transaction.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import polars as pl

from .store import Outcome, Store, apply_outcomes

__all__ = [
    "BATCH_COLUMNS",
    "Collected",
    "batch_keys",
    "batches_frame",
    "get_batch",
    "has_live",
    "live_batches",
    "live_rows",
    "record_collections",
    "record_status",
    "record_submission",
]

BATCH_COLUMNS: Final = (
    "batch_id",
    "status",
    "requests",
    "completed",
    "failed",
    "rows_done",
    "rows_failed",
    "rows_requeued",
    "cost",
    "model",
    "base_url",
    "submitted_at",
    "finished_at",
    "collected_at",
    "input_file_id",
    "output_file_id",
    "error_file_id",
    "message",
)
"""Columns of :func:`batches_frame` (``cost`` is the sum over the batch's rows)."""

_LIVE_ROWS_SCHEMA: Final = {"key": pl.String, "batch_id": pl.String, "batch_status": pl.String}


@dataclass
class Collected:
    """What collecting one finished batch produced, written by :func:`record_collections`."""

    info: dict[str, Any]  # the provider's batch object
    outcomes: list[Outcome] = field(default_factory=list)
    requeue: list[str] = field(default_factory=list)  # keys put back to pending
    requeue_kind: str = "batch_missing"
    message: str | None = None

    @property
    def batch_id(self) -> str:
        return str(self.info["id"])


def _now_us() -> int:
    return int(time.time() * 1_000_000)


def _ts(value: Any) -> int | None:
    """A provider's unix-seconds timestamp as microseconds (``None`` when absent or odd)."""
    return int(value) * 1_000_000 if isinstance(value, int | float) and value > 0 else None


def _counts(info: dict[str, Any]) -> tuple[int | None, int | None]:
    counts = info.get("request_counts")
    if not isinstance(counts, dict):
        return None, None
    done, failed = counts.get("completed"), counts.get("failed")
    return (done if isinstance(done, int) else None), (failed if isinstance(failed, int) else None)


def _finished_us(info: dict[str, Any]) -> int | None:
    status = info.get("status")
    if status in ("completed", "failed", "expired", "cancelled"):
        return _ts(info.get(f"{status}_at")) or _now_us()
    return None


def has_live(store: Store) -> bool:
    with store._locked() as con:
        return bool(con.execute("SELECT 1 FROM batches WHERE collected_at IS NULL LIMIT 1").fetchall())


def live_rows(store: Store, keys: pl.DataFrame) -> pl.DataFrame:
    """``key, batch_id, batch_status`` for the keys of ``keys`` that belong to a live batch."""
    frame = keys.select(pl.col("key").cast(pl.String))
    if frame.height == 0 or not has_live(store):
        return pl.DataFrame(schema=_LIVE_ROWS_SCHEMA)
    with store._locked() as con, store._registered(con, "_pl_live", frame):
        out = con.sql(
            "SELECT r.key, r.batch_id, b.status AS batch_status FROM requests AS r "
            "JOIN batches AS b ON r.batch_id = b.batch_id AND b.collected_at IS NULL "
            "SEMI JOIN _pl_live AS q ON r.key = q.key"
        ).pl()
    return out.cast(_LIVE_ROWS_SCHEMA)  # type: ignore[arg-type]


def live_batches(store: Store, keys: pl.DataFrame | None = None) -> list[dict[str, Any]]:
    """The live batches (oldest first): ``batch_id``, ``status``, ``requests``, ``submitted`` (unix
    seconds); with ``keys``, only those holding one of its keys."""
    with store._locked() as con:
        if keys is None:
            rows = con.execute(
                "SELECT batch_id, status, requests, epoch(submitted_at) FROM batches "
                "WHERE collected_at IS NULL ORDER BY submitted_at, batch_id"
            ).fetchall()
        else:
            with store._registered(con, "_pl_keys", keys.select(pl.col("key").cast(pl.String))):
                rows = con.execute(
                    "SELECT b.batch_id, b.status, b.requests, epoch(b.submitted_at) FROM batches AS b "
                    "WHERE b.collected_at IS NULL "
                    "AND b.batch_id IN (SELECT r.batch_id FROM requests AS r SEMI JOIN _pl_keys AS q "
                    "ON r.key = q.key WHERE r.batch_id IS NOT NULL) ORDER BY b.submitted_at, b.batch_id"
                ).fetchall()
    return [{"batch_id": b, "status": s, "requests": n, "submitted": t} for b, s, n, t in rows]


def batch_keys(store: Store, batch_id: str) -> list[str]:
    """The keys last sent in ``batch_id`` that are not ``done``."""
    with store._locked() as con:
        rows = con.execute(
            "SELECT key FROM requests WHERE batch_id = ? AND status <> 'done'", [batch_id]
        ).fetchall()
    return [str(r[0]) for r in rows]


def record_submission(
    store: Store, info: dict[str, Any], keys: Sequence[str], *, base_url: str, model: str, size: int
) -> None:
    """The provider accepted batch ``info`` holding ``keys``: remember it and mark its rows, at once."""
    now = _now_us()
    frame = pl.DataFrame({"key": list(keys)}, schema={"key": pl.String})
    done, failed = _counts(info)
    with store._transaction() as con, store._registered(con, "_pl_submitted", frame):
        con.execute(
            "INSERT INTO batches (batch_id, base_url, model, endpoint, input_file_id, output_file_id, "
            "error_file_id, status, requests, bytes, completed, failed, submitted_at, checked_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
            "make_timestamp(?::BIGINT), make_timestamp(?::BIGINT))",
            [
                str(info["id"]),
                base_url,
                model,
                str(info.get("endpoint") or "/v1/chat/completions"),
                info.get("input_file_id"),
                info.get("output_file_id"),
                info.get("error_file_id"),
                str(info.get("status") or "validating"),
                len(keys),
                size,
                done,
                failed,
                now,
                now,
            ],
        )
        con.execute(
            "UPDATE requests SET batch_id = ?, status = 'pending', updated_at = make_timestamp(?::BIGINT) "
            "WHERE key IN (SELECT key FROM _pl_submitted) AND status <> 'done'",
            [str(info["id"]), now],
        )


def record_status(store: Store, info: dict[str, Any]) -> None:
    """The provider's latest view of a batch: status, counts, file ids."""
    done, failed = _counts(info)
    finished = _finished_us(info)
    with store._transaction() as con:
        con.execute(
            "UPDATE batches SET status = ?, completed = coalesce(?, completed), "
            "failed = coalesce(?, failed), output_file_id = coalesce(?, output_file_id), "
            "error_file_id = coalesce(?, error_file_id), "
            "checked_at = make_timestamp(?::BIGINT), "
            "finished_at = coalesce(finished_at, make_timestamp(?::BIGINT)) WHERE batch_id = ?",
            [
                str(info.get("status")),
                done,
                failed,
                info.get("output_file_id"),
                info.get("error_file_id"),
                _now_us(),
                finished,
                str(info["id"]),
            ],
        )


def record_collections(store: Store, collected: Sequence[Collected]) -> None:
    """Write the results of finished batches in ONE transaction: answers and failures, rows put back to
    pending, and each batch marked collected (no longer live)."""
    if not collected:
        return
    now = _now_us()
    outcomes = [o for c in collected for o in c.outcomes]
    with store._transaction() as con:
        apply_outcomes(con, outcomes)
        for c in collected:
            if c.requeue:
                frame = pl.DataFrame({"key": c.requeue}, schema={"key": pl.String})
                with store._registered(con, "_pl_requeue", frame):
                    con.execute(
                        "UPDATE requests SET status = 'pending', error = ?, error_kind = ?, "
                        "attempts = attempts + 1, updated_at = make_timestamp(?::BIGINT) "
                        "WHERE key IN (SELECT key FROM _pl_requeue) AND status <> 'done' AND batch_id = ?",
                        [c.message, c.requeue_kind, now, c.batch_id],
                    )
            done = sum(1 for o in c.outcomes if o.status == "done")
            counts_done, counts_failed = _counts(c.info)
            con.execute(
                "UPDATE batches SET status = ?, completed = coalesce(?, completed), "
                "failed = coalesce(?, failed), output_file_id = coalesce(?, output_file_id), "
                "error_file_id = coalesce(?, error_file_id), rows_done = ?, rows_failed = ?, "
                "rows_requeued = ?, message = ?, checked_at = make_timestamp(?::BIGINT), "
                "finished_at = coalesce(finished_at, make_timestamp(?::BIGINT)), "
                "collected_at = make_timestamp(?::BIGINT) WHERE batch_id = ?",
                [
                    str(c.info.get("status")),
                    counts_done,
                    counts_failed,
                    c.info.get("output_file_id"),
                    c.info.get("error_file_id"),
                    done,
                    len(c.outcomes) - done,
                    len(c.requeue),
                    c.message,
                    now,
                    _finished_us(c.info) or now,
                    now,
                    c.batch_id,
                ],
            )


def get_batch(store: Store, batch_id: str) -> dict[str, Any] | None:
    """One row of ``batches`` as a dict, or ``None``."""
    frame = batches_frame(store).filter(pl.col("batch_id") == batch_id)
    return frame.row(0, named=True) if frame.height else None


def batches_frame(store: Store) -> pl.DataFrame:
    """Every batch the store remembers (newest first), with ``live`` and the cost of its rows."""
    cols = ", ".join(f"b.{c}" for c in BATCH_COLUMNS if c != "cost")
    with store._locked() as con:
        frame = con.sql(
            f"SELECT {cols}, b.collected_at IS NULL AS live, "
            "(SELECT sum(r.cost) FROM requests AS r WHERE r.batch_id = b.batch_id) AS cost "
            "FROM batches AS b ORDER BY b.submitted_at DESC, b.batch_id DESC"
        ).pl()
    return frame.select("batch_id", "live", *[c for c in BATCH_COLUMNS if c != "batch_id"])
