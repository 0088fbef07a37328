"""Batch mode: the provider's batch API as a sibling of the online engine."""

from __future__ import annotations

from .admin import batches, cancel_batch
from .progress import BatchProgress, BatchStats, batch_note
from .run import BATCH_PRICE_FACTOR, execute_batch

__all__ = [
    "BATCH_PRICE_FACTOR",
    "BatchProgress",
    "BatchStats",
    "batch_note",
    "batches",
    "cancel_batch",
    "execute_batch",
]
