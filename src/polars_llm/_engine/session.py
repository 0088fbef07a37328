"""A run's session: one store, one transport, one pacing state and budget, for one or many chunks of keys.

:meth:`Session.answer` makes sure every key of a chunk is answered or failed and returns its state:
look up what the store holds, skip rows whose batch is still running (batch mode), price the run
(:func:`~polars_llm._cost.budget.plan_costs`), register the pending jobs, send them from the worker pool of
:mod:`polars_llm._engine.run`, and read the final state back. A one-shot call (:func:`execute`) is a session
that answers one chunk; a streamed run (:mod:`polars_llm._pipeline.stream`, ``polars-llm run``) keeps the
session open across its chunks, so pacing, the learned rate, the refusal tracking and ``max_cost`` carry over
from one chunk to the next and the cache is opened once.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import anyio
import polars as pl

from .. import exceptions as exc
from .._bridge import offload
from .._config import MapConfig
from .._cost import Budget, Costing, budget_exceeded, plan_costs
from .._progress import RunStats
from .._store import DETAIL_SCHEMA, Journal, iter_jobs, jobs_frame, live_rows, open_store
from .._transport import Transport, make_transport
from .run import Run, Sink, Work, work_jobs, write_batches

__all__ = ["QueryAborted", "Session", "execute"]

log = logging.getLogger("polars_llm")


class QueryAborted(Exception):
    """The Polars query a streamed run works for was interrupted (Ctrl-C) while the session used Polars.

    During an interrupted query every Polars call raises ``KeyboardInterrupt``, in any thread; raised in an
    event loop's task it would stop the loop itself, so the session turns it into this plain exception.
    """


class Session:
    """See the module docstring. Use as ``async with Session(cfg, stats) as s: await s.answer(...)``."""

    def __init__(
        self,
        cfg: MapConfig,
        stats: RunStats | None = None,
        *,
        store: Any = None,
        limits: Any = None,
        costing: Costing | None = None,
        budget: Any = None,
    ) -> None:
        """``store`` (an object with the :class:`Store` methods the session calls), ``limits`` (an object
        with the :class:`~polars_llm._engine.pace.pacer.Pacer` interface plus ``release``: the pace of every
        request), ``costing`` and ``budget`` replace the session's own: a Ray worker passes proxies of the hub
        that owns the cache and the cluster-wide limits."""
        self.cfg = cfg
        self.stats = stats if stats is not None else RunStats()
        self.store = store
        self._own_store = store is None
        self.started = time.time()
        self._costing = costing
        self._budget = budget
        self._costs_given = costing is not None  # priced by the caller (a Ray hub): nothing to plan here
        self._limits = limits
        self._transport: Transport | None = None
        self._run: Run | None = None

    async def __aenter__(self) -> Self:
        return self  # the cache is opened by the first answer that needs it: nothing to do, nothing opened

    async def _open(self) -> Any:
        if self.store is None:
            self.store = await open_store(self.cfg.cache_path, self.cfg.cache_wait)
        return self.store

    async def __aexit__(
        self, exc_type: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        with anyio.CancelScope(shield=True):
            try:
                if self._transport is not None:
                    await self._transport.aclose()
            finally:
                if self.store is not None and self._own_store:
                    await offload(self.store.close)

    async def answer(self, keys: pl.Series, prompts: pl.Series, **options: Any) -> pl.DataFrame:
        """See :meth:`_answer` (the same, with an interrupted Polars query as :class:`QueryAborted`)."""
        try:
            return await self._answer(keys, prompts, **options)
        except KeyboardInterrupt as interrupt:
            raise QueryAborted("the Polars query was interrupted") from interrupt

    async def _answer(
        self,
        keys: pl.Series,
        prompts: pl.Series,
        *,
        on_start: Callable[[RunStats], None] | None = None,
        work: Work | None = None,
        send: bool = True,
    ) -> pl.DataFrame:
        """The state of every key: ``key, status, result, error`` (``embedding`` for ``work.vectors``),
        the details ``cfg.include`` asks for, ``cached`` (``done`` before this session sent anything for it)
        and ``batch_status`` (set while the row's batch is running).

        Rows already ``done`` are not sent again; ``failed`` and unknown ones are (unless ``send=False``:
        then the state is only looked up, as after a budget stop). Raises a
        :class:`~polars_llm.exceptions.FatalError` after persisting what finished; a
        :class:`~polars_llm.exceptions.BudgetExceededError` carries the state as it stands (``.state``).
        """
        cfg, stats, store = self.cfg, self.stats, await self._open()
        work = work if work is not None else Work()
        stats.total += len(keys)
        details = [d for d in cfg.include if d in DETAIL_SCHEMA]
        lookup = functools.partial(store.lookup, vectors=work.vectors)
        key_frame = pl.DataFrame(
            {"key": keys, "prompt": prompts}, schema={"key": pl.String, "prompt": pl.String}
        )
        indexed = work.payloads is not None or work.extra is not None
        if indexed:
            key_frame = key_frame.with_row_index("_job")

        async def final_state(cached: pl.Series | None, live: pl.DataFrame | None = None) -> pl.DataFrame:
            state = await offload(lookup, key_frame.select("key"), details)
            flag = pl.col("key").is_in(cached.implode()) if cached is not None else pl.lit(True)
            state = state.with_columns(flag.alias("cached"))
            if live is not None and live.height:  # batch mode: rows in a batch still running
                state = state.join(live.select("key", "batch_status"), on="key", how="left")
            return state

        known = await offload(lookup, key_frame.select("key"))
        is_done = pl.col("status") == "done"
        if known.height == len(keys) and known.select(is_done.all()).item():
            stats.cached += len(keys)  # all answered already (a rerun): skip the anti-join below
            if on_start is not None:
                on_start(stats)
            return await final_state(None) if cfg.include else known.with_columns(cached=pl.lit(True))
        done = known.filter(is_done).get_column("key")
        todo = key_frame.join(done.to_frame(), on="key", how="anti", maintain_order="left")
        live_of = getattr(store, "live_rows", None) or functools.partial(live_rows, store)
        live = await offload(live_of, todo.select("key"))
        if live.height:  # in a batch still running at the provider (mode="batch"): never sent twice
            todo = todo.join(live, on="key", how="anti", maintain_order="left")
            stats.total -= live.height
            log.warning(
                "%d rows are in batches still running at the provider: not sent again (status 'submitted'); "
                "collect them with mode='batch'",
                live.height,
            )
        stats.cached += len(keys) - live.height - todo.height
        if todo.height == 0 or not send:
            if on_start is not None:
                on_start(stats)
            return await final_state(done, live)
        costing, budget = await self._plan(key_frame.select("key"), work)
        if on_start is not None:
            on_start(stats)
        todo_keys = todo.get_column("key")
        todo_prompts = todo.get_column("prompt")
        picks = todo.get_column("_job") if indexed else None
        extra = work.extra[picks] if work.extra is not None else None
        jobs = jobs_frame(cfg, todo_keys, todo_prompts, columns=work.columns, extra=extra)
        await offload(store.register, jobs)
        payloads: pl.Series | Sequence[Any] = todo_prompts
        if work.payloads is not None and picks is not None:
            payloads = [work.payloads[i] for i in picks.to_list()]
        del todo, known, jobs, extra
        try:
            if work.pool is not None:
                await work.pool(cfg, store, todo_keys, payloads, stats, costing, budget)
            else:
                await self._chat_pool(todo_keys, payloads)
        except exc.BudgetExceededError as error:
            error.state = await final_state(done, live)
            raise
        return await final_state(done, live)

    async def _plan(self, keys: pl.DataFrame, work: Work) -> tuple[Costing, Budget | None]:
        """The run's costing (priced once per session) and budget; a later chunk adds to the budget what
        earlier runs spent on its rows (finished before this session started)."""
        store = self.store
        assert store is not None
        if self._costs_given:
            assert self._costing is not None
            return self._costing, self._budget
        if self._costing is None:
            plan = functools.partial(plan_costs, answers=not work.vectors)
            self._costing, spent = await offload(plan, self.cfg, store, keys)
            if self.cfg.max_cost is not None and spent is not None:
                self._budget = Budget(self.cfg.max_cost, spent)
                self.stats.budget, self.stats.spent_before = self._budget.limit, self._budget.spent
        elif self._budget is not None:
            price = self._costing.price
            earlier = functools.partial(store.spent, before=self.started)
            spent = await offload(earlier, keys, (price.input, price.output))
            self._budget.add_spent(spent)
            self.stats.spent_before += spent
        return self._costing, self._budget

    async def _chat_pool(self, keys: pl.Series, prompts: pl.Series | Sequence[Any]) -> None:
        """Send chat requests from ``concurrency`` workers sharing one iterator; one batched writer."""
        cfg, stats, store = self.cfg, self.stats, self.store
        assert store is not None and self._costing is not None
        if self._transport is None:
            self._transport = make_transport(cfg)
        workers = min(cfg.concurrency, max(1, len(keys)))
        sink = Sink(cfg.flush_rows, Journal.for_store(store, fsync=cfg.fsync))
        finished_before = stats.finished
        run = self._run
        try:
            async with anyio.create_task_group() as outer:
                outer.start_soon(write_batches, store, sink, cfg)
                try:
                    async with anyio.create_task_group() as pool:
                        if run is None:
                            run = self._run = Run(
                                cfg,
                                self._transport,
                                stats,
                                pool.cancel_scope.cancel,
                                self._costing,
                                self._budget,
                                limits=self._limits,
                            )
                        run.cancel = pool.cancel_scope.cancel
                        jobs = iter_jobs(keys, prompts)
                        for _ in range(workers):
                            pool.start_soon(work_jobs, run, jobs, sink)
                finally:
                    sink.close()
        finally:
            with anyio.CancelScope(shield=True):
                # the writer has stopped; if it was cancelled before it ever ran, this keeps what finished,
                # and rows cut off mid-request keep their attempts (they stay pending)
                taken, unfinished = sink.take(), []
                if run is not None and run.unfinished:
                    unfinished, run.unfinished = run.unfinished, []
                try:
                    if taken or unfinished or taken.segments:
                        await offload(sink.commit, store, taken, *unfinished)
                        log.debug("stored %d finished rows", len(taken) + len(unfinished))
                finally:
                    sink.release()
        if run is not None and run.fatal is not None:
            raise run.fatal
        left = len(keys) - (stats.finished - finished_before)
        if self._budget is not None and self._budget.exhausted and left > 0:
            raise budget_exceeded(self._budget, left)
        if left > 0:  # pragma: no cover - defensive
            raise RuntimeError(f"engine stopped early: {len(keys) - left} of {len(keys)} requests finished")


async def execute(
    cfg: MapConfig,
    keys: pl.Series,
    prompts: pl.Series,
    *,
    stats: RunStats | None = None,
    on_start: Callable[[RunStats], None] | None = None,
    work: Work | None = None,
) -> pl.DataFrame:
    """Answer one set of keys in a session of its own (see :meth:`Session.answer`)."""
    if stats is not None:
        stats.total = stats.cached = 0  # counted by the answer (a display may have shown the total already)
    async with Session(cfg, stats) as session:
        return await session.answer(keys, prompts, on_start=on_start, work=work)
