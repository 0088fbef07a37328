"""A run's live counters (:class:`RunStats`): written by the engine or batch mode, read by the progress bar.

>>> stats = RunStats(total=10, done=7, failed=1)
>>> stats.finished
8
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["RunStats"]


@dataclass
class RunStats:
    """Live counters, read by the progress bar and returned to callers."""

    total: int = 0
    cached: int = 0
    done: int = 0
    failed: int = 0
    retrying: int = 0
    in_flight: int = 0
    requests: int = 0
    rate_limited: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0  # USD this run (reported, or tokens × a known price)
    spent_before: float = 0.0  # USD earlier runs spent on this call's rows (known with max_cost)
    budget: float | None = None  # max_cost
    started: float = field(default_factory=time.monotonic)
    pacing: Callable[[], tuple[float | None, str, float, str]] | None = field(
        default=None, repr=False, compare=False
    )
    """``(requests/min allowed or None, source, seconds paused, why)``, read by the progress bar."""

    @property
    def finished(self) -> int:
        return self.done + self.failed
