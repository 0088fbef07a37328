"""Batch mode (``mode="batch"``): the rows not done go through the provider's batch API, durably.

:func:`execute_batch` is the batch-mode counterpart of :func:`polars_llm._engine.session.execute` (same
arguments; the result frame has a ``batch_status`` column too):

1. the store is opened and the keys looked up; rows already ``done`` are the answer for them;
2. every live batch holding one of the keys is checked and those that ended are *collected*: their
   output and error files are downloaded, each answer is interpreted exactly as online
   (:func:`~polars_llm._transport.answer.interpret`: content filter, ``response_model`` validation, error
   mapping) and everything is written in one transaction that also marks the batches collected. Rows the
   provider did not answer (an expired, cancelled or failed batch, a line missing from the output) go back to
   pending;
3. the rows neither done, nor in a live batch, nor failed just now are written as JSON Lines requests
   (``custom_id`` = content key, ``body`` = exactly what the online path sends), split by
   ``batch_max_requests`` / ``batch_max_bytes``, uploaded and submitted. Each batch is recorded in the
   same moment the provider accepts it (shielded from cancellation), so a key is never submitted twice;
4. with ``wait=True`` the live batches are polled (``poll_interval`` seconds, growing ×1.5 up to 60 s)
   and collected as they end. Interrupting the wait leaves them running and recorded: the same call run
   later collects them.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlparse

import anyio
import polars as pl

from .. import exceptions as exc
from .._config import MapConfig
from .._cost import Budget, Costing, budget_exceeded, plan_costs
from .._progress import RunStats
from .._request import request_spec
from .._store import (
    DETAIL_SCHEMA,
    Collected,
    Outcome,
    Store,
    batch_keys,
    jobs_frame,
    live_batches,
    live_rows,
    open_store,
    record_collections,
    record_status,
    record_submission,
)
from .._transport import Completion, next_delay
from ..exceptions import StoreError
from .client import BatchClient
from .lines import BatchFile, batch_errors, batch_files, outcome_of, parse_lines, row_outcome
from .progress import BatchStats, say

__all__ = ["BATCH_PRICE_FACTOR", "check_endpoint", "execute_batch"]

log = logging.getLogger("polars_llm")

BATCH_PRICE_FACTOR: Final = 0.5
"""What a batch request costs relative to the same request online (OpenAI's published discount)."""

TERMINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})
_GROWTH: Final = 1.5
_MAX_POLL: Final = 60.0
_LOST_AFTER: Final = 600.0  # a batch the provider answers 404 for is given up only after this many seconds
_WRITE_ROWS: Final = 100_000  # collected rows held before a write, when many batches end at once
_NO_BATCH_API: Final = ("openrouter.ai",)
_REQUEUE_KIND: Final = {
    "completed": "batch_missing",
    "expired": "batch_expired",
    "cancelled": "batch_cancelled",
    "failed": "batch_failed",
    "not_found": "batch_lost",
}


def check_endpoint(cfg: MapConfig) -> None:
    """Refuse, before any network call, an endpoint known to have no batch API we can use.

    >>> check_endpoint(MapConfig(model="m", api_key="k", cache="/tmp/c.duckdb", mode="batch"))
    Traceback (most recent call last):
    ...
    polars_llm.exceptions.BatchUnsupportedError: https://openrouter.ai/api/v1 has no batch API ...
    """
    host = (urlparse(cfg.url).hostname or "").lower()
    if any(host == h or host.endswith("." + h) for h in _NO_BATCH_API):
        raise exc.BatchUnsupportedError(
            f"{cfg.url} has no batch API polars_llm can use (OpenRouter's is not the OpenAI protocol); "
            "nothing was sent. Use mode='online' there, or a provider with OpenAI's /v1/batches (e.g. "
            "base_url='https://api.openai.com/v1').",
            base_url=cfg.url,
        )


def _unsupported(cfg: MapConfig) -> exc.BatchUnsupportedError:
    return exc.BatchUnsupportedError(
        f"{cfg.url} answers 'not found' on /batches: it has no batch API; nothing was uploaded. "
        "Use mode='online' with it, or a provider that implements OpenAI's /v1/files and /v1/batches.",
        base_url=cfg.url,
        status=404,
    )


def _ended(info: dict[str, Any]) -> bool:
    """Whether a batch has ended and its files can be collected.

    A batch reported ended with answers counted but no file id yet is not collected now (its files may
    appear a moment later): collecting it would put answered rows back to pending and pay for them twice.

    >>> _ended({"status": "completed", "output_file_id": "f", "request_counts": {"completed": 2}})
    True
    >>> _ended({"status": "completed", "output_file_id": None, "request_counts": {"completed": 2}})
    False
    >>> _ended({"status": "in_progress"}), _ended({"status": "not_found"})
    (False, True)
    """
    status = info.get("status")
    if status == "not_found":
        return True
    if status not in TERMINAL:
        return False
    counts = info.get("request_counts")
    answered = 0
    if isinstance(counts, dict):
        answered = sum(n for n in (counts.get("completed"), counts.get("failed")) if isinstance(n, int))
    return bool(answered == 0 or info.get("output_file_id") or info.get("error_file_id"))


# -- the run -------------------------------------------------------------------------------------------------


class _BatchRun:
    """One batch-mode call: its store, client, keys and counters."""

    def __init__(
        self, cfg: MapConfig, store: Store, client: BatchClient, stats: RunStats, keys: pl.DataFrame
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.client = client
        self.stats = stats
        self.keys = keys  # "key": every key of the call
        self.failed_now: set[str] = set()
        self.validate = request_spec(cfg).validator
        self.probed = False
        self.costing: Costing | None = None  # at the batch price, once planned (see plan)
        self.budget: Budget | None = None
        self.over_budget = 0  # requests not submitted because max_cost would not cover them

    async def plan(self, key_frame: pl.DataFrame) -> None:
        """Price the run at the batch price; with ``max_cost``, a budget that counts what was spent on
        these rows and, as committed, the worst case of the rows in batches still running."""
        costing, spent = await self._thread(plan_costs, self.cfg, self.store, key_frame.select("key"))
        self.costing = Costing(costing.price.scaled(BATCH_PRICE_FACTOR), costing.tokens, costing.system_chars)
        if spent is None:
            return
        live = await self._thread(live_rows, self.store, key_frame.select("key"))
        running = key_frame.join(live.select("key"), on="key", how="semi").get_column("prompt")
        committed = sum(self.costing.worst(p) for p in running)
        self.budget = Budget(self.cfg.max_cost, spent + committed)  # type: ignore[arg-type]
        self.stats.budget, self.stats.spent_before = self.budget.limit, self.budget.spent

    def say(self, text: str) -> None:
        say(text, show=self.cfg.progress)

    # -- the seams for cost (max_cost, price) ----------------------------------------------------------------

    async def reserve(self, file: BatchFile) -> bool:
        """Called before each batch file is uploaded: ``False`` stops submitting (this file and the rest
        stay pending, nothing of them is paid for).

        The seam for ``max_cost``: a budget reserves the whole file here, its requests' worst case at the
        batch price (:data:`BATCH_PRICE_FACTOR` of the online one), and settles each row when its batch is
        collected (:meth:`cost_of`). Without a budget every file is submitted. The reservation is kept:
        the batch is paid when it is collected, perhaps by another run, which counts it again from the
        store (see :meth:`plan`).
        """
        if self.budget is None or self.costing is None:
            return True
        return self.budget.try_reserve(sum(self.costing.worst(p) for p in file.prompts))

    def cost_of(self, completion: Completion) -> float | None:
        """A batch answer's cost: the provider's ``usage.cost`` (already the batch price). The seam for
        ``price=``: without ``usage.cost``, tokens × price × :data:`BATCH_PRICE_FACTOR`."""
        if completion.cost is not None or self.costing is None:
            return completion.cost
        return self.costing.of(completion)

    async def _thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        with anyio.CancelScope(shield=True):  # a store write under way is never abandoned halfway
            return await anyio.to_thread.run_sync(fn, *args)

    # -- collect ---------------------------------------------------------------------------------------------

    async def collect_pass(self, *, resubmit_now: bool) -> int:
        """Check every live batch of these keys once; collect those that ended. Returns how many still run."""
        live = await self._thread(live_batches, self.store, self.keys)
        ended: list[Collected] = []
        held = running = in_batches = completed = failed = 0
        for batch in live:
            info = await self._retrieve(batch["batch_id"])
            if info["status"] == "not_found" and time.time() - (batch["submitted"] or 0) < _LOST_AFTER:
                info = {"id": batch["batch_id"], "status": batch["status"]}  # maybe not visible yet
            if _ended(info):
                collected = await self._collect(info, resubmit_now=resubmit_now)
                ended.append(collected)
                held += len(collected.outcomes)
                if held >= _WRITE_ROWS:
                    await self._write(ended)
                    ended, held = [], 0
                continue
            running += 1
            counts = info.get("request_counts") if isinstance(info.get("request_counts"), dict) else {}
            in_batches += int(counts.get("total") or batch["requests"] or 0)
            completed += int(counts.get("completed") or 0)
            failed += int(counts.get("failed") or 0)
            await self._thread(record_status, self.store, info)
        await self._write(ended)
        if isinstance(self.stats, BatchStats):
            s = self.stats
            s.live_batches, s.in_batches, s.batch_completed, s.batch_failed = (
                running,
                in_batches,
                completed,
                failed,
            )
        return running

    async def _retrieve(self, batch_id: str) -> dict[str, Any]:
        try:
            return await self.client.retrieve(batch_id)
        except exc.NotFoundError:
            return {"id": batch_id, "status": "not_found"}

    async def _download(self, file_id: Any, batch_id: str) -> bytes:
        if not isinstance(file_id, str) or not file_id:
            return b""
        try:
            return await self.client.content(file_id)
        except exc.NotFoundError:
            log.warning("batch %s: file %s is gone (404); its rows go back to pending", batch_id, file_id)
            return b""

    async def _collect(self, info: dict[str, Any], *, resubmit_now: bool) -> Collected:
        batch_id, status = str(info["id"]), str(info.get("status"))
        waiting = set(await self._thread(batch_keys, self.store, batch_id))
        answered: dict[str, Outcome] = {}
        # the error file first: a request found in both files keeps its answer
        for file_id in (info.get("error_file_id"), info.get("output_file_id")):
            raw = await self._download(file_id, batch_id)
            for line in parse_lines(raw, f"batch {batch_id} file {file_id}"):
                key = line.get("custom_id")
                if not isinstance(key, str) or key not in waiting:
                    continue
                outcome = outcome_of(key, line, self.validate, self.cost_of)
                if outcome is None:  # not run (batch_expired): back to pending
                    answered.pop(key, None)
                else:
                    answered[key] = outcome
        requeue = sorted(waiting - answered.keys())
        reason = batch_errors(info)
        if status == "not_found":
            reason = f"the provider no longer knows batch {batch_id} (404)"
        note = f"batch {batch_id} {status.replace('_', ' ')}" + (f" ({reason})" if reason else "")
        collected = Collected(
            info=info,
            outcomes=list(answered.values()),
            requeue=requeue,
            requeue_kind=_REQUEUE_KIND.get(status, "batch_missing"),
            message=reason or None,
        )
        n_done = sum(1 for o in collected.outcomes if o.status == "done")
        text = f"{note}: {n_done:,} done, {len(collected.outcomes) - n_done:,} failed"
        if requeue:
            missing = "not in its output" if status == "completed" else "not run"
            then = "resubmitting them now" if resubmit_now else "run the same call again to resubmit them"
            text += f", {len(requeue):,} {missing}: back to pending, {then}"
            collected.message = f"{note}: {len(requeue):,} rows {missing}, back to pending"
        self.say(text)
        return collected

    async def _write(self, ended: list[Collected]) -> None:
        if not ended:
            return
        await self._thread(record_collections, self.store, ended)
        stats = self.stats
        for c in ended:
            for o in c.outcomes:
                if o.status == "done":
                    stats.done += 1
                else:
                    stats.failed += 1
                    self.failed_now.add(o.key)
                stats.tokens_in += o.tokens_in or 0
                stats.tokens_out += o.tokens_out or 0
                stats.cost += o.cost or 0.0

    # -- submit ----------------------------------------------------------------------------------------------

    async def submit(self, keys: pl.Series, prompts: pl.Series) -> None:
        """Upload and submit ``keys``/``prompts`` in as many batches as the limits need."""
        if not self.probed:
            if not await self.client.supports_batches():
                raise _unsupported(self.cfg)
            self.probed = True
        await self._thread(self.store.register, jobs_frame(self.cfg, keys, prompts))
        too_big: list[tuple[str, int]] = []
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        submitted = 0
        for n, file in enumerate(batch_files(self.cfg, keys, prompts, too_big), 1):
            if not await self.reserve(file):
                self.over_budget = len(keys) - submitted - len(too_big)
                self.say(
                    f"stopped submitting: max_cost does not cover batch file {n} ({len(file):,} requests)"
                )
                break
            submitted += len(file)
            uploaded = await self.client.upload(file.data, f"polars_llm_{stamp}_{n}.jsonl")
            info = await self._create(str(uploaded["id"]), file)
            self.stats.requests += len(file)
            if isinstance(self.stats, BatchStats):
                self.stats.submitted += len(file)
                self.stats.live_batches += 1
                self.stats.in_batches += len(file)
            self.say(f"submitted batch {info['id']}: {len(file):,} requests ({len(file.data) / 1e6:,.1f} MB)")
        if too_big:
            limit = self.cfg.batch_max_bytes
            outcomes = [
                row_outcome(
                    key,
                    "failed",
                    error_kind="bad_request",
                    error=f"the batch request is {size:,} bytes, more than batch_max_bytes={limit:,}",
                )
                for key, size in too_big
            ]
            await self._thread(self.store.write_outcomes, outcomes)
            self.stats.failed += len(outcomes)
            self.failed_now.update(o.key for o in outcomes)

    async def _create(self, file_id: str, file: BatchFile) -> dict[str, Any]:
        """``POST /batches`` and record the batch in the same shielded step; a lost answer is looked up
        by its input file before trying again, so one file never becomes two batches."""
        cfg = self.cfg
        metadata = {"source": "polars_llm", "requests": str(len(file))}
        attempts = 0
        while True:
            attempts += 1
            with anyio.CancelScope(shield=True):
                try:
                    info = await self.client.create_once(file_id, metadata)
                except exc.APIError as e:
                    error = e
                else:
                    await self._record(info, file)
                    return info
            error.attempts = attempts
            if isinstance(error, exc.NotFoundError):
                raise _unsupported(cfg) from None
            delay = next_delay(error, attempts, max_attempts=cfg.max_attempts, max_backoff=cfg.max_backoff)
            if delay is None:
                raise error
            await anyio.sleep(delay)
            refused = isinstance(error, exc.APIConnectionError) and error.refused
            if not refused:  # the batch may have been created and only the answer lost
                with anyio.CancelScope(shield=True):
                    found = await self.client.find_by_input_file(file_id)
                    if found is not None:
                        await self._record(found, file)
                        return found

    async def _record(self, info: dict[str, Any], file: BatchFile) -> None:
        await anyio.to_thread.run_sync(
            lambda: record_submission(
                self.store,
                info,
                file.keys,
                base_url=self.cfg.url,
                model=request_spec(self.cfg).model,
                size=len(file.data),
            )
        )

    # -- wait ------------------------------------------------------------------------------------------------

    async def wait(self) -> None:
        """Poll the live batches of these keys, collecting each as it ends, until none is left."""
        interval = self.cfg.poll_interval
        ceiling = max(self.cfg.poll_interval, _MAX_POLL)
        for n in itertools.count():
            if await self.collect_pass(resubmit_now=False) == 0:
                return
            if n == 0:
                live = self.stats.live_batches if isinstance(self.stats, BatchStats) else None
                what = "the batches" if live is None else ("1 batch" if live == 1 else f"{live:,} batches")
                self.say(
                    f"waiting for {what}; interrupting leaves them running: the same call later collects them"
                )
            # the cache is closed while we sleep: other processes (`polars-llm batches`…) may use it
            await self._thread(self.store.close)
            await anyio.sleep(interval)
            self.store = await self._reopen(interval)
            interval = min(interval * _GROWTH, ceiling)

    async def _reopen(self, interval: float) -> Store:
        told = False
        while True:
            try:
                return await self._thread(Store.open, self.cfg.cache_path)
            except StoreError as error:
                if error.holder is None:
                    raise
                if not told:
                    self.say(f"the cache is in use by {error.holder}; collecting once it is free")
                    told = True
                await anyio.sleep(interval)


def _with_batch_status(state: pl.DataFrame, live: pl.DataFrame) -> pl.DataFrame:
    return state.join(live.select("key", "batch_status"), on="key", how="left")


async def execute_batch(
    cfg: MapConfig,
    keys: pl.Series,
    prompts: pl.Series,
    *,
    stats: RunStats | None = None,
    on_start: Callable[[RunStats], None] | None = None,
) -> pl.DataFrame:
    """Collect what finished, submit what is left, optionally wait; ``key, status, result, error,
    batch_status`` of every key found in the store (``batch_status`` set while its batch is live).

    Raises :class:`~polars_llm.BatchUnsupportedError` before any upload when the endpoint has no batch API.
    """
    stats = stats if stats is not None else BatchStats()
    stats.total = len(keys)
    store = await open_store(cfg.cache_path, cfg.cache_wait)
    run: _BatchRun | None = None
    try:
        key_frame = pl.DataFrame(
            {"key": keys, "prompt": prompts}, schema={"key": pl.String, "prompt": pl.String}
        )
        only_keys = key_frame.select("key")
        details = [d for d in cfg.include if d in DETAIL_SCHEMA]
        known = await anyio.to_thread.run_sync(store.lookup, only_keys, details)
        is_done = pl.col("status") == "done"
        cached = known.filter(is_done).get_column("key")
        stats.cached = len(cached)
        if stats.cached == len(keys):
            if on_start is not None:
                on_start(stats)
            return known.with_columns(pl.lit(None, pl.String).alias("batch_status"), cached=pl.lit(True))
        check_endpoint(cfg)
        if on_start is not None:
            on_start(stats)
        async with BatchClient(
            cfg.url, cfg.key, timeout=cfg.timeout, max_attempts=cfg.max_attempts, max_backoff=cfg.max_backoff
        ) as client:
            run = _BatchRun(cfg, store, client, stats, only_keys)
            await run.collect_pass(resubmit_now=True)
            await run.plan(key_frame)
            known = await anyio.to_thread.run_sync(store.lookup, only_keys)
            live = await anyio.to_thread.run_sync(live_rows, store, only_keys)
            skip = pl.concat(
                [
                    known.filter(is_done).select("key"),
                    live.select("key"),
                    pl.DataFrame({"key": sorted(run.failed_now)}, schema={"key": pl.String}),
                ]
            )
            todo = key_frame.join(skip, on="key", how="anti", maintain_order="left")
            del known, live, skip
            if todo.height:
                await run.submit(todo.get_column("key"), todo.get_column("prompt"))
            del todo
            if cfg.wait:
                await run.wait()
                store = run.store  # reopened between polls
        state = await anyio.to_thread.run_sync(store.lookup, only_keys, details)
        live = await anyio.to_thread.run_sync(live_rows, store, only_keys)
        state = _with_batch_status(state, live).with_columns(
            pl.col("key").is_in(cached.implode()).alias("cached")
        )
        if run is not None and run.budget is not None and run.over_budget:
            error = budget_exceeded(run.budget, run.over_budget)
            error.state = state
            raise error
        return state
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(store.close)
            if run is not None:
                await anyio.to_thread.run_sync(run.store.close)
