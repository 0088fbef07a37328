"""The run loop: a fixed pool of workers pulling from one shared iterator, one batched writer, shared pacing.

:class:`Run` sends one row's request with its retries, :func:`work_jobs` is one worker, :class:`Sink` and
:func:`write_batches` the single writer. :func:`~polars_llm._engine.session.execute` (in ``session.py``)
opens the store, sends only what is not ``done`` yet, and returns every key's final state. Memory beyond the
input and results is O(concurrency): workers are ``concurrency`` tasks taking jobs from one iterator, and
finished rows are flushed to DuckDB in batches (every ``flush_interval`` seconds or ``flush_rows`` rows, and
on exit, error, cancel and interrupt) from a worker thread. Jobs and outcomes move without memory streams: a
stream costs several event-loop round trips per row, which at zero latency halved throughput (see
``benchmarks/``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import polars as pl

from .. import exceptions as exc
from .._bridge import offload
from .._config import MapConfig
from .._cost import Budget, Costing
from .._progress import RunStats
from .._request import request_spec
from .._store import Journal, Outcome, Store
from .._transport import (
    Completion,
    Transport,
    backoff_delay,
    describe_hint,
    error_text,
    hint_header,
    interpret,
    next_delay,
    parse_limits,
    wait_hint,
)
from .pace import Pacer, Ticket, TokenBucket

__all__ = [
    "FAIL",
    "RETRY",
    "STOP",
    "Run",
    "Sink",
    "Taken",
    "Work",
    "work_jobs",
    "write_batches",
]

log = logging.getLogger("polars_llm")

# Continuous connection refusal for this long (after at least one answer) is fatal.
_REFUSED_FATAL_AFTER = 10.0
_REFUSED_FATAL_AT_START = 3


class _NoLimit:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc_info: object) -> None:
        return None


_NO_LIMIT = _NoLimit()
RETRY, FAIL, STOP = object(), object(), object()  # verdicts of Run.recover


class _Usage:
    """Tokens and cost of one row, summed over its attempts."""

    __slots__ = ("cost", "tokens_cached", "tokens_in", "tokens_out", "tokens_reasoning")

    def __init__(self) -> None:
        self.tokens_in = self.tokens_out = self.tokens_reasoning = self.tokens_cached = 0
        self.cost = 0.0

    def add(self, completion: Completion, cost: float | None) -> None:
        self.tokens_in += completion.tokens_in or 0
        self.tokens_out += completion.tokens_out or 0
        self.tokens_reasoning += completion.tokens_reasoning or 0
        self.tokens_cached += completion.tokens_cached or 0
        self.cost += cost or 0.0

    def outcome(self, key: str, status: str, attempts: int, **fields: Any) -> Outcome:
        return Outcome(
            key=key,
            status=status,
            attempts=attempts,
            tokens_in=self.tokens_in or None,
            tokens_out=self.tokens_out or None,
            tokens_reasoning=self.tokens_reasoning or None,
            tokens_cached=self.tokens_cached or None,
            cost=self.cost or None,
            finished_at=time.time() if status != "pending" else None,
            **fields,
        )


class Run:
    """State shared by the workers of one run."""

    def __init__(
        self,
        cfg: MapConfig,
        transport: Transport,
        stats: RunStats,
        cancel: Callable[[], None],
        costing: Costing,
        budget: Budget | None = None,
        *,
        limits: Any = None,
    ) -> None:
        self.cfg = cfg
        self.transport = transport
        self.stats = stats
        self.cancel = cancel
        self.costing = costing
        self.budget = budget
        # the pace: this process's own, or one shared beyond it (Ray: the hub's permits and learned rate)
        self.pacer: Any = limits if limits is not None else Pacer(learn=not (cfg.rpm_limit or cfg.tpm_limit))
        self.remote = limits is not None
        stats.pacing = self.describe_pace
        self.fatal: exc.FatalError | None = None
        self.unfinished: list[Outcome] = []  # rows stopped mid-request: their attempts still count
        self._sent_for: dict[str, int] = {}  # attempts sent so far, per row in progress
        self.rpm = TokenBucket(cfg.rpm_limit) if cfg.rpm_limit else None
        self.tpm = TokenBucket(cfg.tpm_limit, burst=1.0) if cfg.tpm_limit else None
        if self.tpm is not None:
            # start empty: a full bucket would add a 1 s burst on top of the steady rate at t=0, which a
            # provider's sliding token window shorter than ~20 s answers with 429s (see benchmarks/)
            self.tpm.adjust(self.tpm.capacity)
        self.answered = False
        self.refused_since: float | None = None
        self.refused_count = 0
        self.out_estimate = float(cfg.max_tokens or 64)
        self.system_chars = len(cfg.system or "")
        self.validate = request_spec(cfg).validator

    def succeeded(self, ticket: Ticket | None = None, limits: Any = None) -> None:
        """Bookkeeping after an answered request of any kind: the endpoint is reachable, and the pace
        learns from the answer (and the limit headers it carried)."""
        self.answered, self.refused_since, self.refused_count = True, None, 0
        if ticket is not None:
            self.pacer.answered(ticket, limited=False, limits=limits)

    def describe_pace(self) -> tuple[float | None, str, float, str]:
        """What the progress bar shows: the pace kept (requests/min and where it comes from), and any
        wait everybody is in."""
        per_minute, source, paused, why = self.pacer.describe()
        if self.rpm is not None and (per_minute is None or self.rpm.rate * 60 < per_minute):
            per_minute, source = self.rpm.rate * 60, "limit"
        return per_minute, source, paused, why

    def set_fatal(self, error: exc.FatalError) -> None:
        if self.fatal is None:
            self.fatal = error
            self.cancel()

    def interpret(self, completion: Completion) -> str:
        return interpret(completion, self.validate)

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
                    f"{self.cfg.url} refused {self.refused_count} connections in a row "
                    f"({error.message}); is the server running and base_url right?",
                    attempts=self.refused_count,
                )
            )

    async def pace(self, tokens: float) -> Ticket:
        """Wait until one more request (of ``tokens`` estimated tokens) may be sent; record its send.

        Client limits (``rpm_limit``/``tpm_limit``) are hard caps; then the shared pause, the budgets a
        provider announced and the learned rate (:class:`~polars_llm._engine.pace.pacer.Pacer`). With shared
        limits (Ray) the hub applies all of them and the ticket is a permit, held until :meth:`release`.
        """
        if self.remote:
            return await self.pacer.acquire(tokens)
        if self.rpm is not None:
            await self.rpm.acquire(1)
        if self.tpm is not None:
            await self.tpm.acquire(tokens)
        return await self.pacer.acquire(tokens)

    def release(self, ticket: Ticket | None) -> None:
        """The request of ``ticket`` is over (answered or not): a shared permit goes back to the hub."""
        if self.remote and ticket is not None:
            self.pacer.release(ticket)

    def slot(self) -> Any:
        """The in-flight limit below ``concurrency`` (an async context manager); the pool already caps
        requests at ``concurrency`` and rate control paces them, so there is none beyond it today.

        Concurrency AIMD used to be cut here on 429s; rate control replaced it, because cutting the
        number in flight on every 429 burst starves latency-bound runs (a 500 req/s cap at 50 ms needs
        25 in flight).
        """
        return _NO_LIMIT

    def _too_long(self, error: exc.APIError, hint: float) -> exc.ProviderWaitError:
        cfg = self.cfg
        said = hint_header(error.headers) or "a rate-limit reset header"
        then = (
            "everything finished so far is saved — run the same code again later to resume, or raise max_wait"
            if cfg.cache_path is not None
            else "raise max_wait, or run it again later"  # cache=None kept nothing to resume from
        )
        return exc.ProviderWaitError(
            f"the provider asked to wait {describe_hint(hint)} ({said}), longer than "
            f"max_wait={cfg.max_wait:g} s; {then}",
            status=error.status,
            headers=error.headers,
            body=error.body,
            retry_after=hint,
            attempts=error.attempts,
            request_id=error.request_id,
            hint=said,
            max_wait=cfg.max_wait,
        )

    async def process(self, key: str, prompt: Any) -> Outcome | None:
        """Send one request, retrying what is worth retrying. ``None`` means the run is stopping."""
        usage = _Usage()
        try:
            return await self._attempts(key, prompt, usage)
        except BaseException:
            self._left_pending(
                key, usage, "the run stopped while this request was in flight or waiting to retry"
            )
            raise

    def _left_pending(self, key: str, usage: _Usage, why: str, kind: str | None = None) -> None:
        """This row stays pending, but the attempts it already sent (and their usage) are recorded."""
        sent = self._sent_for.pop(key, 0)
        if sent:
            error = f"interrupted after {sent} attempt(s): {why}"
            self.unfinished.append(usage.outcome(key, "pending", sent, error=error, error_kind=kind))

    async def _attempts(self, key: str, prompt: Any, usage: _Usage) -> Outcome | None:
        stats, budget = self.stats, self.budget
        estimate = (len(prompt) + self.system_chars) / 4 + self.out_estimate
        attempts = 0
        while True:
            reserved = self.costing.worst(prompt) if budget is not None else 0.0
            if budget is not None and not await budget.reserve(reserved):
                self._left_pending(key, usage, "max_cost reached")
                return None  # max_cost reached: this row stays pending
            cost: float | None = 0.0  # no answer, nothing to pay
            ticket: Ticket | None = None
            error: exc.APIError
            try:
                ticket = await self.pace(estimate)
                attempts += 1
                self._sent_for[key] = attempts
                async with self.slot():
                    stats.in_flight += 1
                    stats.requests += 1
                    try:
                        completion = await self.transport.complete(prompt)
                        self.succeeded(ticket, completion.limits)
                        self.release(ticket)
                        cost = self.costing.of(completion)
                        usage.add(completion, cost)
                        self._account(completion, cost, estimate)
                        result = self.interpret(completion)
                    except exc.APIError as e:
                        error = e
                    else:
                        stats.done += 1
                        del self._sent_for[key]
                        return usage.outcome(key, "done", attempts, result=result)
                    finally:
                        stats.in_flight -= 1
            finally:
                if budget is not None:
                    budget.settle(reserved, cost)
            error.attempts = attempts
            verdict = await self.recover(error, attempts, ticket)
            if verdict is RETRY:
                continue
            if verdict is STOP:
                self._left_pending(key, usage, str(error), error.kind)
                return None
            del self._sent_for[key]
            stats.failed += 1
            return usage.outcome(key, "failed", attempts, error=error_text(error), error_kind=error.kind)

    async def recover(self, error: exc.APIError, attempts: int, ticket: Ticket | None = None) -> object:
        """After a failed attempt: ``RETRY`` (after waiting its delay), ``FAIL`` (this request's rows are
        failed) or ``STOP`` (the run is stopping). Shared by every kind of request.

        The pace learns from the answer; a provider's wait (``Retry-After``, a limit's reset) is honoured
        up to ``max_wait``, a longer one stops the run with :class:`~polars_llm.ProviderWaitError`.
        """
        cfg, stats = self.cfg, self.stats
        held = 0.0  # how long everybody now waits: the pace's own wait, which this row's backoff joins
        try:
            if isinstance(error, exc.FatalError):
                self.set_fatal(error)
                return STOP
            if isinstance(error, exc.APIConnectionError) and error.refused:
                self._note_refused(error)
                if self.fatal is not None:
                    return STOP
            elif error.status is not None and error.status != 200:
                self.answered, self.refused_since, self.refused_count = True, None, 0
                limits = parse_limits(error.headers) if error.headers else None
                hint = None
                if isinstance(error, exc.TransientError):
                    hint = wait_hint(error.retry_after, error.status, limits)
                if hint is not None and hint > cfg.max_wait:
                    self.set_fatal(self._too_long(error, hint))
                    return STOP
                if hint is not None:
                    error.retry_after = hint
                if ticket is not None:
                    if isinstance(error, exc.RateLimitError):
                        backoff = backoff_delay(min(attempts, 3), max_backoff=cfg.max_backoff)
                        self.pacer.refused(ticket, hint=hint, limits=limits, backoff=backoff)
                        held = self.pacer.describe()[2]
                    else:
                        self.pacer.answered(ticket, limited=False, limits=limits)
        finally:
            self.release(ticket)
        delay = next_delay(error, attempts, max_attempts=cfg.max_attempts, max_backoff=cfg.max_backoff)
        if delay is None:
            return FAIL
        if held > 0:
            # everybody waits for the pace (a provider's hint, a wall's backoff): this row retries when
            # the wait ends, not after a backoff of its own that grows with its attempts on top of it
            delay = min(delay, held)
        if isinstance(error, exc.RateLimitError) or error.retry_after is not None:
            stats.rate_limited += 1
        stats.retrying += 1
        try:
            await anyio.sleep(delay)
        finally:
            stats.retrying -= 1
        return RETRY

    def _account(self, completion: Completion, cost: float | None, estimate: float) -> None:
        stats = self.stats
        stats.tokens_in += completion.tokens_in or 0
        stats.tokens_out += completion.tokens_out or 0
        stats.cost += cost or 0.0
        if completion.tokens_out is not None:
            self.out_estimate = 0.9 * self.out_estimate + 0.1 * completion.tokens_out
        if self.tpm is not None and completion.tokens_in is not None:
            self.tpm.adjust(completion.tokens_in + (completion.tokens_out or 0) - estimate)


class Taken(list[Outcome]):
    """A batch taken from a :class:`Sink`, with the journal segments that hold exactly its outcomes."""

    segments: Sequence[Any] = ()


class Sink:
    """Finished outcomes waiting for the writer: a plain list (no per-row task switch), with backpressure.

    Workers ``put`` synchronously; the writer wakes when ``flush_rows`` are waiting, on its interval, or
    when the pool closes the sink. Workers wait (``room``) only if the writer falls far behind. With a
    ``journal`` (:mod:`polars_llm._store.journal`) each outcome is also appended to it as it is put, so a
    killed process loses nothing it was answered.
    """

    def __init__(self, flush_rows: int, journal: Journal | None = None) -> None:
        self.flush_rows = flush_rows
        self.high_water = max(4 * flush_rows, 4096)
        self.buffer: list[Outcome] = []
        self.full = anyio.Event()
        self.drained = anyio.Event()
        self.closed = False
        self.journal = journal

    def put(self, outcome: Outcome) -> None:
        self.buffer.append(outcome)
        if self.journal is not None:
            self.journal.append(outcome)
        if len(self.buffer) >= self.flush_rows:
            self.full.set()

    async def room(self) -> None:
        while len(self.buffer) >= self.high_water and not self.closed:
            await self.drained.wait()

    def take(self) -> Taken:
        taken = Taken(self.buffer)
        self.buffer = []
        if self.journal is not None:
            taken.segments = self.journal.seal()
        if self.full.is_set():
            self.full = anyio.Event()
        self.drained.set()
        self.drained = anyio.Event()
        return taken

    def commit(self, store: Store, taken: Taken, *extra: Outcome) -> None:
        """Write ``taken`` (and ``extra`` outcomes) in one transaction, then drop its journal segments; in
        a worker thread."""
        store.write_outcomes([*taken, *extra] if extra else taken)
        if self.journal is not None and taken.segments:
            self.journal.remove(taken.segments)

    def close(self) -> None:
        self.closed = True
        self.full.set()
        self.drained.set()

    def release(self) -> None:
        """After the last commit: close the journal (a segment whose write failed stays for the next open)."""
        if self.journal is not None:
            self.journal.close()


async def work_jobs(run: Run, jobs: Iterator[tuple[str, Any]], sink: Sink) -> None:
    """One of ``concurrency`` workers; all share one iterator (safe: ``next`` never awaits)."""
    for n, (key, prompt) in enumerate(jobs, 1):
        outcome = await run.process(key, prompt)
        if outcome is None:
            return
        sink.put(outcome)
        if len(sink.buffer) >= sink.high_water:
            await sink.room()
        elif n % 16 == 0:
            await anyio.lowlevel.checkpoint()  # a worker callable that never awaits still lets others run


async def write_batches(store: Store, sink: Sink, cfg: MapConfig) -> None:
    """The single writer: batches outcomes into one DuckDB transaction each, off the event loop (and, with
    ``fsync``, keeps the journal flushed to disk meanwhile)."""

    async def flush() -> None:
        taken = sink.take()
        if taken or taken.segments:
            with anyio.CancelScope(shield=True):  # taken from the sink: it must be written
                await offload(sink.commit, store, taken)
            log.debug("stored %d finished rows", len(taken))

    async def write() -> None:
        try:
            while not sink.closed:
                with anyio.move_on_after(cfg.flush_interval):
                    await sink.full.wait()
                await flush()
        finally:
            with anyio.CancelScope(shield=True):
                await flush()

    if sink.journal is None or not sink.journal.fsync:
        await write()
        return
    async with anyio.create_task_group() as syncing:
        syncing.start_soon(sink.journal.keep_synced)
        try:
            await write()
        finally:
            syncing.cancel_scope.cancel()


# (cfg, store, keys, payloads, stats, costing, budget): sends the jobs of one call (chat workers by default)
PoolRunner = Callable[
    [MapConfig, Store, pl.Series, "pl.Series | Sequence[Any]", RunStats, Costing, "Budget | None"],
    Awaitable[None],
]


@dataclass(frozen=True, slots=True)
class Work:
    """How :func:`execute` registers and sends one call's jobs; the default is plain chat prompts.

    ``columns``: job columns shared by every row (default ``request_spec(cfg).job_columns()``); ``extra``:
    per-job columns and ``payloads``: per-job payloads (else the prompt text), both aligned with the keys;
    ``pool``: what sends the jobs (default: ``concurrency`` chat workers); ``vectors``: answers are
    embeddings, read from the store's ``embedding`` column.
    """

    columns: Mapping[str, str | None] | None = None
    extra: pl.DataFrame | None = None
    payloads: Sequence[Any] | None = None
    pool: PoolRunner | None = None
    vectors: bool = False
