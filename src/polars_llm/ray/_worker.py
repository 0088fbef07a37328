"""The worker side: proxies of the hub that a :class:`~polars_llm._engine.session.Session` uses as its store,
its limits and its budget, and :class:`LLMMap`, the callable class ``Dataset.map_batches`` runs."""

from __future__ import annotations

import os
import threading
from typing import Any

import polars as pl
import pyarrow as pa

from .._bridge import LoopThread
from .._config.options import MapConfig, resolve_config
from .._engine.session import Session
from .._pipeline.pipeline import EMPTY_STATE, assemble, prepare
from .._store.store import Outcome

__all__ = ["LLMMap", "RemoteBudget", "RemoteLimits", "RemoteStore"]


def _get(ref: Any) -> Any:
    import ray

    return ray.get(ref)


class RemoteStore:
    """The :class:`~polars_llm._store.store.Store` methods a session calls, answered by the hub (blocking)."""

    def __init__(self, hub: Any, worker: str) -> None:
        self.hub = hub
        self.worker = worker

    def lookup(self, keys: pl.DataFrame, details: Any = (), *, vectors: bool = False) -> pl.DataFrame:
        return _get(self.hub.call.remote("lookup", keys, list(details), vectors=vectors))

    def live_rows(self, keys: pl.DataFrame) -> pl.DataFrame:
        return _get(self.hub.call.remote("live_rows", keys))

    def register(self, jobs: pl.DataFrame) -> int:
        return _get(self.hub.call.remote("register", jobs))

    def write_outcomes(self, outcomes: list[Outcome]) -> None:
        _get(self.hub.write.remote(list(outcomes), self.worker))

    def close(self) -> None:
        return None


class RemoteLimits:
    """The hub's permits, with the :class:`~polars_llm._engine.pace.pacer.Pacer` interface the engine uses:
    ``acquire`` waits for a permit (cluster-wide concurrency, rate limits, learned pace, pauses) and returns
    its id; ``answered`` / ``refused`` note the provider's verdict, which goes back to the hub with the permit
    on ``release``, so the pace is learned from every worker's answers."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self._verdicts: dict[int, tuple[str, float | None, Any, float]] = {}

    async def acquire(self, tokens: float = 0.0) -> int:
        return int(await self.hub.lease.remote(tokens))

    def answered(self, ticket: int, *, limited: bool, limits: Any = None, hint: float | None = None) -> bool:
        self._verdicts[ticket] = ("refused" if limited else "answered", hint, limits, 1.0)
        return False

    def refused(self, ticket: int, *, hint: float | None, limits: Any = None, backoff: float = 1.0) -> float:
        self._verdicts[ticket] = ("refused", hint, limits, backoff)
        return 0.0

    def release(self, ticket: int) -> None:
        # not awaited: the permit frees as soon as the hub reads it
        self.hub.release.remote(ticket, self._verdicts.pop(ticket, None))

    def describe(self) -> tuple[float | None, str, float, str]:
        return None, "hub", 0.0, ""


class RemoteBudget:
    """``max_cost`` for the whole cluster: reservations and settlements go to the hub's budget."""

    def __init__(self, hub: Any, spent: float, limit: float) -> None:
        self.hub = hub
        self.spent = spent
        self.limit = limit
        self.exhausted = False

    async def reserve(self, amount: float) -> bool:
        ok = await self.hub.reserve.remote(amount)
        if not ok:
            self.exhausted = True
            state = await self.hub.budget.remote()
            if state is not None:
                self.spent, self.limit, _ = state
        return bool(ok)

    def settle(self, reserved: float, cost: float | None) -> None:
        self.hub.settle.remote(reserved, cost)


class LLMMap:
    """``ds.map_batches(LLMMap, fn_constructor_kwargs=...)``: map one column of every batch through the hub
    named ``hub`` (its cache, its limits), one session per batch.

    Keeps every input column and adds ``result`` and ``status`` (and the ``include`` details), errors as
    data. Prefer :func:`polars_llm.ray.map`, which starts the hub and hands it the API key.
    """

    def __init__(self, column: str, hub: str, options: dict[str, Any]) -> None:
        import ray

        self.column = column
        self.hub = ray.get_actor(hub)
        key = ray.get(self.hub.key.remote())
        self.cfg: MapConfig = resolve_config(api_key=key, **{**options, "progress": False})
        self.worker = f"{os.getpid()}:{threading.get_ident()}"

    async def _answer(self, keys: pl.Series, prompts: pl.Series, work: Any) -> pl.DataFrame:
        costing, spent, limit = await self.hub.plan.remote(keys.to_list())  # also counts earlier spend
        session = Session(
            self.cfg,
            store=RemoteStore(self.hub, self.worker),
            limits=RemoteLimits(self.hub),
            costing=costing,
            budget=RemoteBudget(self.hub, spent, limit) if spent is not None else None,
        )
        async with session:
            return await session.answer(keys, prompts, work=work)

    def __call__(self, batch: pa.Table) -> pa.Table:
        frame = pl.from_arrow(batch)
        assert isinstance(frame, pl.DataFrame)
        prepared = prepare(frame.get_column(self.column), self.cfg)
        state = EMPTY_STATE
        if len(prepared):
            try:
                with LoopThread() as loop:
                    state = loop.call(self._answer, prepared.keys, prepared.unique, prepared.work)
            except Exception as error:
                if getattr(error, "state", None) is None:
                    raise
                state = error.state  # a budget stop: finished rows filled in, the rest pending
        out = assemble(prepared, state, self.cfg).struct.unnest()
        return frame.hstack(out).to_arrow()
