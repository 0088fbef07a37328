"""Pools that send several jobs per request: embeddings (``batch_size`` texts) and packed rows (``pack``).

:func:`run_groups` is the engine's pool shape for them: ``concurrency`` workers share one iterator of
groups of up to ``size`` jobs, each hands its group to a sender (``await sender.send(jobs)``, ``False``
when the run is stopping), and one batched writer stores what the sender puts in the sink.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import anyio
import polars as pl

from .._bridge import offload
from .._config import MapConfig
from .._cost import Budget, Costing, budget_exceeded
from .._progress import RunStats
from .._store import Journal, Store, iter_jobs
from .._transport import make_transport
from .run import Run, Sink, write_batches

__all__ = ["Sender", "groups_of", "run_groups", "share"]


class Sender(Protocol):
    sink: Sink

    async def send(self, jobs: list[tuple[str, Any]]) -> bool: ...


def groups_of(jobs: Iterator[tuple[str, Any]], size: int) -> Iterator[list[tuple[str, Any]]]:
    """Lists of up to ``size`` jobs (``itertools.batched`` is 3.12+); safe to share: ``next`` never awaits.

    >>> list(groups_of(iter([("a", 1), ("b", 2), ("c", 3)]), 2))
    [[('a', 1), ('b', 2)], [('c', 3)]]
    """
    return iter(lambda: list(itertools.islice(jobs, size)), [])


async def _worker(sender: Sender, groups: Iterator[list[tuple[str, Any]]]) -> None:
    sink = sender.sink
    for jobs in groups:
        if not await sender.send(jobs):
            return
        if len(sink.buffer) >= sink.high_water:
            await sink.room()


async def run_groups(
    cfg: MapConfig,
    store: Store,
    keys: pl.Series,
    payloads: Any,
    stats: RunStats,
    costing: Costing,
    budget: Budget | None,
    *,
    size: int,
    sender: Callable[[Run, Sink], Sender],
) -> None:
    """Send every (key, payload) in groups of ``size`` from ``concurrency`` workers; one batched writer.

    ``cfg`` is the chat-shaped configuration :class:`~polars_llm._engine.Run` and the transports read.
    Raises the run's fatal error, or :class:`~polars_llm.BudgetExceededError` when ``max_cost`` left rows
    unsent, after storing everything that finished.
    """
    transport = make_transport(cfg)
    groups = groups_of(iter_jobs(keys, payloads), size)
    workers = min(cfg.concurrency, max(1, -(-len(keys) // size)))
    sink = Sink(cfg.flush_rows, Journal.for_store(store, fsync=cfg.fsync))
    run: Run | None = None
    finished_before = stats.finished
    try:
        async with anyio.create_task_group() as outer:
            outer.start_soon(write_batches, store, sink, cfg)
            try:
                async with anyio.create_task_group() as pool:
                    run = Run(cfg, transport, stats, pool.cancel_scope.cancel, costing, budget)
                    each = sender(run, sink)
                    for _ in range(workers):
                        pool.start_soon(_worker, each, groups)
            finally:
                sink.close()
    finally:
        with anyio.CancelScope(shield=True):
            taken, unfinished = sink.take(), []  # the writer has stopped; keep what it had not taken yet
            if run is not None and run.unfinished:
                unfinished, run.unfinished = run.unfinished, []
            try:
                if taken or unfinished or taken.segments:
                    await offload(sink.commit, store, taken, *unfinished)
            finally:
                sink.release()
                await transport.aclose()
    if run is not None and run.fatal is not None:
        raise run.fatal
    left = len(keys) - (stats.finished - finished_before)
    if budget is not None and budget.exhausted and left > 0:
        raise budget_exceeded(budget, left)


def share(total: int, weights: Sequence[int]) -> list[int]:
    """``total`` split in proportion to ``weights`` (largest remainder: the parts add up to ``total``).

    >>> share(10, [1, 1, 2]), share(7, [0, 0])
    ([3, 2, 5], [4, 3])
    """
    weights = [max(w, 0) for w in weights] if any(w > 0 for w in weights) else [1] * len(weights)
    whole = sum(weights)
    exact = [total * w / whole for w in weights]
    parts = [int(x) for x in exact]
    by_remainder = sorted(range(len(parts)), key=lambda i: parts[i] - exact[i])
    for i in by_remainder[: total - sum(parts)]:
        parts[i] += 1
    return parts
