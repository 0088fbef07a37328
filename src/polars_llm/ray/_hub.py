"""The hub: one Ray actor per cache, owning the DuckDB store and the cluster-wide limits.

DuckDB lets one process hold a file, so the hub is the only process that opens the cache: workers send it
their look-ups and their finished rows in batches (one transaction each, as a single process writes
them). It also hands out request permits from one set of limits — ``concurrency`` (requests in flight),
``rpm_limit`` / ``tpm_limit``, the pace learned from the provider's answers or announced in its limit
headers (with its shared pauses after a ``Retry-After``; see :mod:`polars_llm._engine.pace.pacer`), and the
``max_cost`` budget — so they hold for the whole cluster, not per worker: workers hand every answer's
verdict back with the permit. The API key lives only in the hub's memory
(set by the driver with :meth:`Hub.set_key`) and reaches workers through an actor call: it is never
pickled into the dataset's plan, never written anywhere.

The hub closes the cache file when idle for :data:`IDLE_CLOSE` seconds, so the file is not held locked
between jobs; it reopens it on the next call.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Final

import anyio
import polars as pl

from .._config.options import MapConfig
from .._cost.budget import Budget, Costing, plan_costs
from .._engine.pace.buckets import TokenBucket
from .._engine.pace.pacer import Pacer, Ticket
from .._store.store import Outcome, Store
from .._transport.limit_headers import Limits

__all__ = ["IDLE_CLOSE", "Hub"]

IDLE_CLOSE: Final = 5.0

Verdict = tuple[str, float | None, Limits | None, float]
"""What a worker hands back with a permit: ``(kind, hint, limits, backoff)``."""


class Hub:
    """The state every worker of one cache shares (run as an async Ray actor; see the module doc)."""

    def __init__(self, options: dict[str, Any]) -> None:
        # the key comes right after, from the driver (set_key): never in the actor's constructor arguments
        cfg = MapConfig(**{**options, "api_key": "(set by set_key)"})
        self.cfg = cfg
        self._key: str | None = None
        self._store: Store | None = None
        self._used = time.monotonic()
        self._leases: dict[int, float] = {}  # lease id -> when it expires (a dead worker's leases do)
        self._next_lease = 0
        self._freed = anyio.Event()
        self._pacer = Pacer(learn=not (cfg.rpm_limit or cfg.tpm_limit))
        self._tickets: dict[int, Ticket] = {}
        self.rpm = TokenBucket(cfg.rpm_limit) if cfg.rpm_limit else None
        self.tpm = TokenBucket(cfg.tpm_limit, burst=1.0) if cfg.tpm_limit else None
        if self.tpm is not None:
            self.tpm.adjust(self.tpm.capacity)  # start empty, as the single-process engine does
        self._costing: Costing | None = None
        self._budget: Budget | None = None
        self._planned_at = time.time()
        self.leases = 0
        self.max_in_flight = 0
        self.refusals = 0
        self.rows_written = 0
        self.workers: set[str] = set()
        threading.Thread(target=self._close_when_idle, name="polars-llm-hub-idle", daemon=True).start()

    # -- the key -----------------------------------------------------------------------------------------

    def set_key(self, key: str) -> None:
        self._key = key
        self.cfg = self.cfg.replace(api_key=key)  # the price list may need it

    def key(self) -> str | None:
        return self._key

    # -- the store ---------------------------------------------------------------------------------------

    def _open(self) -> Store:
        self._used = time.monotonic()
        if self._store is None or self._store.closed:
            self._store = Store.open(self.cfg.cache_path)
        return self._store

    def _close_when_idle(self) -> None:
        """A daemon thread for the hub's life: close the cache after :data:`IDLE_CLOSE` idle seconds (the
        store's own lock keeps it from closing under a call)."""
        while True:
            time.sleep(IDLE_CLOSE / 4)
            store = self._store
            if store is not None and time.monotonic() - self._used > IDLE_CLOSE:
                store.close()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """A store method on the hub's own connection (``lookup``, ``register``, ``live_rows``, ...)."""
        if method == "live_rows":
            from .._store.batches import live_rows

            return live_rows(self._open(), *args)
        if method not in _STORE_METHODS:
            raise ValueError(f"the hub does not forward {method!r}")
        return getattr(self._open(), method)(*args, **kwargs)

    def write(self, outcomes: list[Outcome], worker: str = "") -> int:
        self._open().write_outcomes(outcomes)
        self.rows_written += len(outcomes)
        if worker:
            self.workers.add(worker)
        return len(outcomes)

    # -- cost --------------------------------------------------------------------------------------------

    def plan(self, keys: list[str], answers: bool = True) -> tuple[Costing, float | None, float]:
        """The run's costing (priced once) and the budget's ``(spent, limit)``: the first call counts what
        earlier runs spent on its keys; later calls add what earlier runs spent on theirs."""
        frame = pl.DataFrame({"key": keys}, schema={"key": pl.String})
        store = self._open()
        if self._costing is None:
            self._costing, spent = plan_costs(self.cfg, store, frame, answers=answers)
            if spent is not None:
                self._budget = Budget(self.cfg.max_cost, spent)  # type: ignore[arg-type]
        elif self._budget is not None:
            price = self._costing.price
            self._budget.add_spent(store.spent(frame, (price.input, price.output), before=self._planned_at))
        budget = self._budget
        return self._costing, budget.spent if budget is not None else None, budget.limit if budget else 0.0

    async def reserve(self, amount: float) -> bool:
        return True if self._budget is None else await self._budget.reserve(amount)

    def settle(self, reserved: float, cost: float | None) -> None:
        if self._budget is not None:
            self._budget.settle(reserved, cost)

    def budget(self) -> tuple[float, float, bool] | None:
        b = self._budget
        return None if b is None else (b.spent, b.limit, b.exhausted)

    # -- permits -----------------------------------------------------------------------------------------

    async def lease(self, tokens: float = 0.0) -> int:
        """Wait until one more request may be sent anywhere in the cluster; returns a lease id, which holds
        one of the ``concurrency`` slots until :meth:`release` — or until ``timeout`` + 5 s have passed (a
        worker killed mid-request never releases). The rate limits, the learned pace and any pause apply to
        the cluster."""
        while True:
            self._reclaim()
            if len(self._leases) < self.cfg.concurrency:
                break
            with anyio.move_on_after(1.0):
                await self._freed.wait()
        if self.rpm is not None:
            await self.rpm.acquire(1)
        if self.tpm is not None:
            await self.tpm.acquire(tokens)
        ticket = await self._pacer.acquire(tokens)
        self._next_lease += 1
        self._leases[self._next_lease] = time.monotonic() + self.cfg.timeout + 5.0
        self._tickets[self._next_lease] = ticket
        self.leases += 1
        self.max_in_flight = max(self.max_in_flight, len(self._leases))
        return self._next_lease

    def release(self, lease: int, verdict: Verdict | None = None) -> None:
        """Give a permit back, with what the provider answered: ``(kind, hint, limits, backoff)`` where
        ``kind`` is ``"answered"`` or ``"refused"`` (a 429), or ``None`` (no answer: nothing to learn)."""
        ticket = self._tickets.pop(lease, None)
        if ticket is not None and verdict is not None:
            kind, hint, limits, backoff = verdict
            if kind == "refused":
                self.refusals += 1
                self._pacer.refused(ticket, hint=hint, limits=limits, backoff=backoff)
            else:
                self._pacer.answered(ticket, limited=False, limits=limits)
        if self._leases.pop(lease, None) is not None:
            self._wake()

    def _reclaim(self) -> None:
        now = time.monotonic()
        for lease in [lease for lease, until in self._leases.items() if until < now]:
            del self._leases[lease]
            self._tickets.pop(lease, None)

    def _wake(self) -> None:
        self._freed.set()
        self._freed = anyio.Event()

    def pace(self) -> tuple[float | None, str, float, str]:
        """The cluster's pace, as the progress bar shows it (see
        :meth:`polars_llm._engine.pace.pacer.Pacer.describe`)."""
        return self._pacer.describe()

    def stats(self) -> dict[str, Any]:
        b = self._budget
        return {
            "leases": self.leases,
            "in_flight": len(self._leases),
            "max_in_flight": self.max_in_flight,
            "refusals": self.refusals,
            "pace_per_min": self._pacer.describe()[0],
            "rows_written": self.rows_written,
            "writers": len(self.workers),
            "worker_pids": sorted({int(w.split(":")[0]) for w in self.workers}),
            "spent": None if b is None else b.spent,
        }


_STORE_METHODS: Final = frozenset(
    {"lookup", "register", "spent", "token_history", "prices", "put_prices", "counts", "summary"}
)
