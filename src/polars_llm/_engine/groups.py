"""Pools that send several jobs per request: embeddings (``batch_size`` texts) and packed rows (``pack``).

:func:`run_groups` is the engine's pool shape for them: ``concurrency`` workers share one iterator of
groups of up to ``size`` jobs, each hands its group to a sender (``await sender.send(jobs)``, ``False``
when the run is stopping), and one batched writer stores what the sender puts in the sink.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import anyio
import polars as pl

from .._config.options import MapConfig
from .._cost.budget import Budget, Costing, budget_exceeded
from .._store.store import Store
from .._transport.client import make_transport
from .run import Run, RunStats, Sink, iter_jobs, write_batches

__all__ = ["Sender", "groups_of", "run_groups"]


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
    sink = Sink(cfg.flush_rows)
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
            rest = sink.take()  # the writer has stopped; keep what it had not taken yet
            if run is not None and run.unfinished:
                rest, run.unfinished = rest + run.unfinished, []
            if rest:
                await anyio.to_thread.run_sync(store.write_outcomes, rest)
            await transport.aclose()
    if run is not None and run.fatal is not None:
        raise run.fatal
    left = len(keys) - (stats.finished - finished_before)
    if budget is not None and budget.exhausted and left > 0:
        raise budget_exceeded(budget, left)
