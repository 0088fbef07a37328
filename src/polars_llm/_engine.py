"""The engine: a fixed pool of workers fed from a stream, one batched writer, shared pacing.

``execute`` opens the store, sends only what is not ``done`` yet, and returns every key's final state.
Memory beyond the input and results is O(concurrency): jobs flow through a bounded stream, workers are
``concurrency`` tasks, and finished rows are flushed to DuckDB in batches (every ``flush_interval``
seconds or ``flush_rows`` rows, and on exit, error, cancel and interrupt) from a worker thread.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import polars as pl
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from . import exceptions as exc
from ._client import Completion, Transport, make_transport
from ._config import MapConfig
from ._ratelimit import AdaptiveConcurrency, Cooldown, TokenBucket
from ._retry import backoff_delay, is_retryable
from ._store import Outcome, Store

__all__ = ["RunStats", "execute"]

# Continuous connection refusal for this long (after at least one answer) is fatal.
_REFUSED_FATAL_AFTER = 10.0
_REFUSED_FATAL_AT_START = 3


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
    cost: float = 0.0
    started: float = field(default_factory=time.monotonic)

    @property
    def finished(self) -> int:
        return self.done + self.failed


class _Run:
    """State shared by the workers of one run."""

    def __init__(
        self, cfg: MapConfig, transport: Transport, stats: RunStats, cancel: Callable[[], None]
    ) -> None:
        self.cfg = cfg
        self.transport = transport
        self.stats = stats
        self.cancel = cancel
        self.fatal: exc.FatalError | None = None
        self.cooldown = Cooldown()
        self.adaptive = AdaptiveConcurrency(cfg.concurrency)
        self.rpm = TokenBucket(cfg.rpm_limit) if cfg.rpm_limit else None
        self.tpm = TokenBucket(cfg.tpm_limit, burst=1.0) if cfg.tpm_limit else None
        self.answered = False
        self.refused_since: float | None = None
        self.refused_count = 0
        self.out_estimate = float(cfg.max_tokens or 64)
        self.system_chars = len(cfg.system or "")
        if cfg.response_model is not None:
            from ._structured import validate_text

            model = cfg.response_model
            self.validate: Callable[[str | None], str] | None = lambda text: validate_text(model, text)
        else:
            self.validate = None

    def set_fatal(self, error: exc.FatalError) -> None:
        if self.fatal is None:
            self.fatal = error
            self.cancel()

    def interpret(self, completion: Completion) -> str:
        if completion.finish_reason == "content_filter":
            raise exc.ContentFilterError(
                "the provider's content filter stopped this answer", body=completion.text
            )
        if self.validate is not None:
            if completion.finish_reason == "length":
                raise exc.OutputTruncatedError(
                    "output cut at max_tokens before the JSON was complete; raise max_tokens",
                    body=completion.text,
                )
            return self.validate(completion.text)
        if completion.text is None:
            raise exc.MalformedResponseError("the answer has no text content")
        return completion.text

    def _note_refused(self, error: exc.APIError) -> None:
        now = time.monotonic()
        if self.refused_since is None:
            self.refused_since = now
        self.refused_count += 1
        if (not self.answered and self.refused_count >= _REFUSED_FATAL_AT_START) or (
            now - self.refused_since >= _REFUSED_FATAL_AFTER
        ):
            self.set_fatal(
                exc.EndpointUnreachableError(
                    f"{self.cfg.base_url} refused {self.refused_count} connections in a row "
                    f"({error.message}); is the server running and base_url right?",
                    attempts=self.refused_count,
                )
            )

    async def process(self, key: str, prompt: str) -> Outcome | None:
        """Send one request, retrying what is worth retrying. ``None`` means the run is stopping."""
        cfg, stats = self.cfg, self.stats
        estimate = (len(prompt) + self.system_chars) / 4 + self.out_estimate
        tokens_in = tokens_out = 0
        cost = 0.0
        attempts = 0
        while True:
            attempts += 1
            await self.cooldown.wait()
            if self.rpm is not None:
                await self.rpm.acquire(1)
            if self.tpm is not None:
                await self.tpm.acquire(estimate)
            error: exc.APIError
            async with self.adaptive.limiter:
                stats.in_flight += 1
                stats.requests += 1
                try:
                    completion = await self.transport.complete(prompt)
                    self.answered, self.refused_since, self.refused_count = True, None, 0
                    tokens_in += completion.tokens_in or 0
                    tokens_out += completion.tokens_out or 0
                    cost += completion.cost or 0.0
                    self._account(completion, estimate)
                    result = self.interpret(completion)
                except exc.APIError as e:
                    error = e
                else:
                    self.adaptive.on_success()
                    stats.done += 1
                    return Outcome(
                        key,
                        "done",
                        result,
                        None,
                        None,
                        attempts,
                        tokens_in or None,
                        tokens_out or None,
                        cost or None,
                        time.time(),
                    )
                finally:
                    stats.in_flight -= 1
            error.attempts = attempts
            if isinstance(error, exc.FatalError):
                self.set_fatal(error)
                return None
            if isinstance(error, exc.APIConnectionError) and getattr(error, "refused", False):
                self._note_refused(error)
                if self.fatal is not None:
                    return None
            elif error.status is not None:
                self.answered, self.refused_since, self.refused_count = True, None, 0
            if is_retryable(error) and attempts < cfg.max_attempts:
                if isinstance(error, exc.RateLimitError) or error.retry_after is not None:
                    stats.rate_limited += 1
                    self.adaptive.on_rate_limited()
                    self.cooldown.extend(
                        error.retry_after
                        if error.retry_after is not None
                        else backoff_delay(attempts, max_backoff=cfg.max_backoff)
                    )
                delay = backoff_delay(attempts, retry_after=error.retry_after, max_backoff=cfg.max_backoff)
                stats.retrying += 1
                try:
                    await anyio.sleep(delay)
                finally:
                    stats.retrying -= 1
                continue
            stats.failed += 1
            message = str(error)
            if error.body and isinstance(error, exc.OutputValidationError | exc.OutputTruncatedError):
                message = f"{message}\nraw output: {error.body}"
            return Outcome(
                key,
                "failed",
                None,
                message,
                error.kind,
                attempts,
                tokens_in or None,
                tokens_out or None,
                cost or None,
                time.time(),
            )

    def _account(self, completion: Completion, estimate: float) -> None:
        stats = self.stats
        stats.tokens_in += completion.tokens_in or 0
        stats.tokens_out += completion.tokens_out or 0
        stats.cost += completion.cost or 0.0
        if completion.tokens_out is not None:
            self.out_estimate = 0.9 * self.out_estimate + 0.1 * completion.tokens_out
        if self.tpm is not None and completion.tokens_in is not None:
            self.tpm.adjust(completion.tokens_in + (completion.tokens_out or 0) - estimate)


async def _produce(
    send: ObjectSendStream[tuple[str, str]], keys: Sequence[str], prompts: Sequence[str]
) -> None:
    async with send:
        for item in zip(keys, prompts, strict=True):
            await send.send(item)


async def _work(
    run: _Run, jobs: ObjectReceiveStream[tuple[str, str]], out: ObjectSendStream[Outcome]
) -> None:
    async with jobs, out:
        async for key, prompt in jobs:
            outcome = await run.process(key, prompt)
            if outcome is None:
                return
            await out.send(outcome)


async def _write(store: Store, results: ObjectReceiveStream[Outcome], cfg: MapConfig) -> None:
    """The single writer: batches outcomes into one DuckDB transaction each, off the event loop."""
    buffer: list[Outcome] = []

    async def flush() -> None:
        nonlocal buffer
        batch, buffer = buffer, []
        if batch:
            await anyio.to_thread.run_sync(store.write_outcomes, batch)

    try:
        async with results:
            closed = False
            while not closed:
                deadline = time.monotonic() + cfg.flush_interval
                with anyio.move_on_after(cfg.flush_interval):
                    while len(buffer) < cfg.flush_rows:
                        try:
                            buffer.append(await results.receive())
                        except anyio.EndOfStream:
                            closed = True
                            break
                        if time.monotonic() >= deadline:
                            break
                await flush()
    finally:
        with anyio.CancelScope(shield=True):
            while True:
                try:
                    buffer.append(results.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
            await flush()


def _jobs_frame(cfg: MapConfig, keys: Sequence[str], prompts: Sequence[str], schema: Any) -> pl.DataFrame:
    n = len(keys)
    return pl.DataFrame(
        {
            "key": keys,
            "prompt": prompts,
            "base_url": [cfg.base_url if cfg.worker is None else _worker_name(cfg)] * n,
            "model": [cfg.model] * n,
            "system": pl.Series([cfg.system] * n, dtype=pl.String),
            "params": [json.dumps(cfg.params(), sort_keys=True, default=str)] * n,
            "schema_name": pl.Series(
                [cfg.response_model.__name__ if cfg.response_model else None] * n, dtype=pl.String
            ),
            "schema": pl.Series(
                [json.dumps(schema, sort_keys=True) if schema else None] * n, dtype=pl.String
            ),
        }
    )


def _worker_name(cfg: MapConfig) -> str:
    w = cfg.worker
    return f"worker:{getattr(w, '__module__', '?')}.{getattr(w, '__qualname__', type(w).__name__)}"


async def execute(
    cfg: MapConfig,
    keys: Sequence[str],
    prompts: Sequence[str],
    *,
    stats: RunStats | None = None,
    on_start: Callable[[RunStats], None] | None = None,
    store: Store | None = None,
) -> pl.DataFrame:
    """Make sure every (key, prompt) is answered or failed; return ``key, status, result, error``.

    Rows already ``done`` in the store are not sent again; ``failed`` and unknown ones are.
    Raises a :class:`~polars_llm.exceptions.FatalError` after persisting what finished.
    """
    stats = stats if stats is not None else RunStats()
    stats.total = len(keys)
    own_store = store is None
    if store is None:
        store = await anyio.to_thread.run_sync(Store.open, cfg.cache)
    try:
        key_frame = pl.DataFrame(
            {"key": keys, "prompt": prompts}, schema={"key": pl.String, "prompt": pl.String}
        )
        known = await anyio.to_thread.run_sync(store.lookup, key_frame.select("key"))
        done = known.filter(pl.col("status") == "done").select("key")
        todo = key_frame.join(done, on="key", how="anti", maintain_order="left")
        stats.cached = len(keys) - todo.height
        if on_start is not None:
            on_start(stats)
        if todo.height == 0:
            return known
        schema = None
        if cfg.response_model is not None and cfg.worker is None:
            from ._structured import schema_fingerprint

            schema = schema_fingerprint(cfg.response_model)
        todo_keys = todo.get_column("key").to_list()
        todo_prompts = todo.get_column("prompt").to_list()
        jobs = _jobs_frame(cfg, todo_keys, todo_prompts, schema)
        await anyio.to_thread.run_sync(store.register, jobs)
        del jobs, todo, known
        await _run_pool(cfg, store, todo_keys, todo_prompts, stats)
        return await anyio.to_thread.run_sync(store.lookup, key_frame.select("key"))
    finally:
        if own_store:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(store.close)


async def _run_pool(
    cfg: MapConfig, store: Store, keys: Sequence[str], prompts: Sequence[str], stats: RunStats
) -> None:
    response_format = None
    if cfg.response_model is not None and cfg.worker is None:
        from ._structured import response_format as make_response_format

        response_format = make_response_format(cfg.response_model)
    transport = make_transport(cfg, response_format)
    workers = min(cfg.concurrency, max(1, len(keys)))
    try:
        async with anyio.create_task_group() as outer:
            out_send, out_recv = anyio.create_memory_object_stream[Outcome](max(2 * cfg.flush_rows, 1024))
            outer.start_soon(_write, store, out_recv, cfg)
            async with anyio.create_task_group() as pool:
                run = _Run(cfg, transport, stats, pool.cancel_scope.cancel)
                job_send, job_recv = anyio.create_memory_object_stream[tuple[str, str]](workers)
                pool.start_soon(_produce, job_send, keys, prompts)
                async with job_recv, out_send:
                    for _ in range(workers):
                        pool.start_soon(_work, run, job_recv.clone(), out_send.clone())
    finally:
        with anyio.CancelScope(shield=True):
            await transport.aclose()
    if run.fatal is not None:
        stats_note = f" ({stats.done} rows finished this run and are kept in the cache)"
        run.fatal.message += stats_note
        raise run.fatal
    if math.isfinite(stats.total) and stats.finished < len(keys):  # pragma: no cover - defensive
        raise RuntimeError(f"engine stopped early: {stats.finished} of {len(keys)} requests finished")
