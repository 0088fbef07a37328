"""Progress of a batch-mode run: the provider's ``request_counts`` on the bar, events as lines above it.

The bar counts rows: cached ones, those collected in this call, and those the provider reports as
finished in batches still running. Events (a batch submitted, collected, expired…) are printed as lines
(:func:`say`) whenever ``progress`` is on, even where no bar is drawn, because they tell the user what
happens next; they are always logged (logger ``polars_llm``, INFO).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

from .._cost import usd
from .._progress import Progress, RunStats

__all__ = ["BatchProgress", "BatchStats", "batch_note", "format_batch_postfix", "say"]

log = logging.getLogger("polars_llm")


@dataclass
class BatchStats(RunStats):
    """:class:`RunStats` plus what the provider says about the batches still running."""

    live_batches: int = 0
    in_batches: int = 0  # requests in live batches
    batch_completed: int = 0  # the provider's request_counts over live batches
    batch_failed: int = 0
    submitted: int = 0  # requests submitted by this call


def format_batch_postfix(stats: BatchStats) -> str:
    """The text after the bar.

    >>> format_batch_postfix(BatchStats(done=5, failed=1, live_batches=2, in_batches=100,
    ...                                 batch_completed=40, batch_failed=2, cost=0.5))
    'batches=2 running: 40/100 completed, 2 failed | collected: done=5 failed=1 | $0.500'
    """
    text = ""
    if stats.live_batches:
        text = (
            f"batches={stats.live_batches} running: "
            f"{stats.batch_completed:,}/{stats.in_batches:,} completed, {stats.batch_failed:,} failed | "
        )
    text += f"collected: done={stats.done:,} failed={stats.failed:,}"
    if stats.cost:
        text += f" | {usd(stats.cost)}"
    return text


class BatchProgress(Progress):
    """A :class:`Progress` bar over a batch-mode run (rows, not HTTP requests)."""

    stats: BatchStats
    unit = "row"

    def __init__(self, stats: BatchStats, *, enabled: bool = True, desc: str = "llm batch") -> None:
        super().__init__(stats, enabled=enabled, desc=desc)

    def _position(self) -> int:
        s = self.stats
        return min(s.total, s.cached + s.finished + s.batch_completed + s.batch_failed)

    def _postfix(self) -> str:
        return format_batch_postfix(self.stats)

    def _final(self) -> str:
        return format_batch_postfix(self.stats)


def batch_note(stats: RunStats, cfg: Any) -> str:
    """What a stopped batch-mode run leaves behind (for :func:`polars_llm._pipeline.pipeline.stopped`).

    >>> print(batch_note(BatchStats(done=3, live_batches=2, in_batches=900), None))  # doctest: +ELLIPSIS
    stopped waiting; 3 rows collected; 2 batches (900 requests) keep running at the provider ... them
    """
    text = f"stopped waiting; {stats.done + stats.failed:,} rows collected"
    live = stats.live_batches if isinstance(stats, BatchStats) else 0
    where = f" {cfg.cache_path}" if cfg is not None and cfg.cache_path is not None else ""
    if live:
        requests = stats.in_batches if isinstance(stats, BatchStats) else 0
        text += (
            f"; {live:,} batches ({requests:,} requests) keep running at the provider and are recorded in "
            f"the cache{where}: run the same call again to collect them"
        )
    else:
        text += f"; submitted batches are recorded in the cache{where}: run the same call again to continue"
    return text


def say(text: str, *, show: bool) -> None:
    """Log an event of a batch run and, with ``show`` (``progress=True``), print it above any bar: to
    stdout in a notebook (Jupyter shows stderr in red boxes, as if these notes were errors), to stderr
    in a terminal (beside the text bar, apart from a command's output)."""
    log.info(text)
    if not show:
        return
    from tqdm.std import tqdm

    from .._progress import bar

    tqdm.write(text, file=sys.stdout if bar.in_notebook() else sys.stderr)
