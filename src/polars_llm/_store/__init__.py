"""The DuckDB job store: jobs, files and locking, migrations, the batches table."""

from __future__ import annotations

from .batches import (
    Collected,
    batch_keys,
    batches_frame,
    get_batch,
    live_batches,
    live_rows,
    record_collections,
    record_status,
    record_submission,
)
from .jobs import iter_jobs, jobs_frame
from .locking import connect
from .store import DETAIL_SCHEMA, Outcome, Store

__all__ = [
    "DETAIL_SCHEMA",
    "Collected",
    "Outcome",
    "Store",
    "batch_keys",
    "batches_frame",
    "connect",
    "get_batch",
    "iter_jobs",
    "jobs_frame",
    "live_batches",
    "live_rows",
    "record_collections",
    "record_status",
    "record_submission",
]
