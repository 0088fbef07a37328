"""Rate control: what decides when the next request may go.

* :class:`~polars_llm._engine.pace.learner.RateLearner` — the rate learned from the provider's answers when
its
  limit is unknown (see :mod:`polars_llm._engine.pace.learner`);
* :class:`Announced` — a budget a provider announced in headers (``remaining`` now, back in ``reset``
  seconds): never send more than what remains before the reset, spread it evenly (remaining ÷ time to
  reset), and bound the pace by ``limit`` ÷ the longest reset seen (the provider's own long-run rate);
* :class:`Pause` — a moment before which nobody sends, with the reason shown on the progress bar.

:class:`Pacer` combines them for the engine; ``acquire`` costs a few float operations when no wait is
needed (no lock, no task switch), and waiters queue behind one sleeper that wakes early when the rate or
a pause changes. Everything is driven by an injectable clock (unit tests use a fake one, no sleeps).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import anyio

from ..._transport import AnnouncedLimit, Limits, describe_hint
from .learner import RateLearner, Ticket, wall_backoff

__all__ = ["Announced", "Pacer", "Pause", "RateLearner", "Ticket"]

Clock = Callable[[], float]


class Announced:
    """A budget announced in headers: ``allow`` more before ``reset_at``, at most ``limit`` per window.

    >>> a = Announced(clock=lambda: 0.0)
    >>> a.observe(AnnouncedLimit(limit=60, remaining=30, reset=10.0), used_since=0)
    3.0
    """

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.allow = math.inf
        self.reset_at = -math.inf
        self.limit: float | None = None
        self.longest_reset = 0.0
        self.rate = math.inf

    def observe(self, announcement: AnnouncedLimit, used_since: float, stamped: float | None = None) -> float:
        """Take a fresh announcement (``used_since``: what we sent after the request it answers;
        ``stamped``: when the provider counted that request — its send time, by default now).

        Returns the pace it implies (per second): what remains ÷ the time left to its reset, bounded
        by ``limit`` ÷ the longest reset seen (no window shorter than 1 s is assumed).
        """
        now = self._clock()
        stamped = now if stamped is None else min(stamped, now)
        remaining = announcement.remaining if announcement.remaining is not None else 0.0
        reset = announcement.reset if announcement.reset is not None else 0.0
        self.allow = max(0.0, remaining - used_since)
        self.reset_at = stamped + reset
        self.limit = announcement.limit
        self.longest_reset = max(self.longest_reset, reset)
        left = self.reset_at - now
        rate = max(self.allow, 1.0) / left if left > 0 else math.inf
        if self.limit:
            rate = min(rate, 0.99 * max(self.limit, 1.0) / max(self.longest_reset, 1.0))
        self.rate = rate
        return rate

    def exhaust(self, reset: float, stamped: float | None = None) -> None:
        """Nothing left until ``reset`` seconds after ``stamped`` (a refusal said so; default now)."""
        self.allow = 0.0
        self.reset_at = (self._clock() if stamped is None else stamped) + reset

    def take(self, amount: float) -> None:
        self.allow -= amount

    def wait(self, now: float, amount: float) -> float:
        """Seconds until ``amount`` may be sent under this budget (0 if it may now)."""
        if now >= self.reset_at or self.allow >= min(amount, self.limit or amount):
            return 0.0
        return self.reset_at - now


class Pause:
    """A moment before which no worker sends, and why (for the progress bar)."""

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.until = 0.0
        self.reason = ""

    def extend(self, seconds: float, reason: str) -> None:
        until = self._clock() + seconds
        if until > self.until:
            self.until, self.reason = until, reason

    def left(self) -> float:
        return max(0.0, self.until - self._clock())


class Pacer:
    """Everything that decides *when* the next request may go, shared by a run's workers.

    ``learn=False`` (the user set ``rpm_limit``/``tpm_limit``) starts the learner disengaged: it takes
    over only if the provider still answers 429.
    """

    def __init__(self, *, learn: bool = True, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.learner = RateLearner(clock=clock, engaged=learn)
        self.requests = Announced(clock=clock)
        self.tokens = Announced(clock=clock)
        self.pause = Pause(clock=clock)
        self.source = "learning" if learn else "limit"
        self._next = clock()
        self._seq = 0
        self._tokens_sent = 0.0
        self._token_cost = 0.0  # mean tokens per request (for pacing an announced token budget)
        self._token_rate = math.inf
        self._lock: anyio.Lock | None = None  # created on first use, inside the event loop
        self._changed: anyio.Event | None = None

    # ------------------------------------------------------------------------------------------ pacing

    @property
    def rate(self) -> float:
        """Requests per second the pace allows now (``inf``: no pacing)."""
        rate = self.learner.rate
        if self._token_cost > 0 and self._token_rate < math.inf:
            rate = min(rate, self._token_rate / self._token_cost)
        return rate

    def try_take(self, tokens: float = 0.0) -> float:
        """Take the next slot for a request of ``tokens`` if it is due (returns 0), else the seconds
        until it may be due (nothing taken)."""
        now = self._clock()
        wait = max(self.pause.until - now, self.requests.wait(now, 1.0), self.tokens.wait(now, tokens))
        if wait > 0:
            return wait
        rate = self.rate
        if not math.isinf(rate):
            interval = 1.0 / rate
            slot = max(self._next, now - 0.05) if interval < 0.05 else max(self._next, now)
            if slot > now:
                return slot - now
            self._next = slot + interval
        self.requests.take(1.0)
        self.tokens.take(tokens)
        return 0.0

    async def acquire(self, tokens: float = 0.0) -> Ticket:
        """Wait for this request's turn, then record its send.

        No task switch when the slot is due and nobody waits; otherwise waiters queue (FIFO) and only
        the first sleeps, woken early when the rate or a pause changes.
        """
        lock = self._lock
        if (lock is not None and lock.locked()) or self.try_take(tokens) > 0:
            if lock is None:
                lock = self._lock = anyio.Lock()
            async with lock:
                while (wait := self.try_take(tokens)) > 0:
                    if self._changed is None:
                        self._changed = anyio.Event()
                    with anyio.move_on_after(wait):
                        await self._changed.wait()
        return self.sent(tokens)

    def sent(self, tokens: float) -> Ticket:
        """Record a send that :meth:`try_take` allowed (``acquire`` does both)."""
        now = self._clock()
        self._seq += 1
        ticket = Ticket(now, self._seq, self._tokens_sent, tokens)
        self._tokens_sent += tokens
        if tokens > 0:
            self._token_cost = tokens if self._token_cost == 0 else 0.95 * self._token_cost + 0.05 * tokens
        self.learner.on_send(now)
        return ticket

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # ---------------------------------------------------------------------------------------- feedback

    def answered(
        self, ticket: Ticket, *, limited: bool, limits: Limits | None = None, hint: float | None = None
    ) -> bool:
        """Feed one answer back (``limited``: refused for rate). True if the learner cut its rate."""
        before = self.learner.version
        spent = self._observe(ticket, limits, limited) if limits is not None else None
        if spent is not None and hint is None:
            hint = spent or None
        cut = self.learner.on_answer(ticket, limited, hint, spent=spent is not None)
        if cut:
            self.source = "learned"
        if self.learner.version != before:
            if self.learner.rate < math.inf:  # a lower rate applies from now, not after old slots
                self._next = min(self._next, self._clock() + 1.0 / self.learner.rate)
            self._notify()
        elif limits is not None:
            self._notify()
        return cut

    def refused(
        self, ticket: Ticket, *, hint: float | None, limits: Limits | None = None, backoff: float = 1.0
    ) -> float:
        """Feed back a rate-limit refusal; returns how long everybody now waits (0: only this row).

        Everybody waits for the provider's ``hint`` when this refusal cut the rate for sure, hit a wall
        (nothing admitted) or refusals crowd in (several in a row, above the background); without a
        hint, a wall waits :func:`~polars_llm._learner.wall_backoff` and crowded ones ``backoff``.
        Scattered refusals make only their own row wait.
        """
        learner = self.learner
        cut = self.answered(ticket, limited=True, limits=limits, hint=hint)
        if not ((cut and learner.strong_cut) or learner.crowded):
            return 0.0
        if hint is not None and hint > 0:
            self.hold(hint, f"provider asked to wait {describe_hint(hint)}")
            return hint
        if cut and learner.wall:
            wait = wall_backoff(learner.walls)
            self.hold(wait, f"rate limited, nothing admitted: waiting {describe_hint(wait)}")
            return wait
        if self.learner.crowded:
            self.hold(backoff, f"rate limited: backing off {describe_hint(backoff)}")
            return backoff
        return 0.0

    def _observe(self, ticket: Ticket, limits: Limits, limited: bool) -> float | None:
        """Take in the budgets an answer announced. A refusal saying a budget is spent returns the
        seconds until it comes back (0 if unsaid); otherwise ``None``."""
        if limited:  # a refusal tells when the spent budget comes back, not the pace to keep
            spent = None
            for said, announced in ((limits.requests, self.requests), (limits.tokens, self.tokens)):
                if said is not None and said.remaining is not None and said.remaining < 1:
                    announced.exhaust(said.reset or 0.0, ticket.sent_at)
                    self.learner.note_hold(self._clock(), announced.reset_at)
                    self._next = max(self._next, announced.reset_at)  # no burst when it comes back
                    spent = max(spent or 0.0, said.reset or 0.0)
            return spent
        if limits.requests is not None and limits.requests.usable:
            used = self._seq - ticket.seq
            self.learner.follow(self.requests.observe(limits.requests, used, ticket.sent_at))
            self.source = "announced"
        if limits.tokens is not None and limits.tokens.usable:
            used = self._tokens_sent - ticket.tokens_before - ticket.tokens
            self._token_rate = self.tokens.observe(limits.tokens, used, ticket.sent_at)
            if limits.requests is None:
                self.learner.release()
                self.source = "announced"
        return None

    def hold(self, seconds: float, reason: str) -> None:
        """Nobody sends for ``seconds`` (a provider's wait, or our own backoff after a burst of 429s)."""
        self.pause.extend(seconds, reason)
        self.learner.note_hold(self._clock(), self.pause.until)
        self._next = max(self._next, self.pause.until)
        self._notify()

    # ------------------------------------------------------------------------------------------ display

    def describe(self) -> tuple[float | None, str, float, str]:
        """``(requests per minute or None, source, seconds paused, why)`` for the progress bar."""
        now = self._clock()
        left = self.pause.left()
        reason = self.pause.reason if left > 0 else ""
        if left <= 0:
            for name, budget in (("requests", self.requests), ("tokens", self.tokens)):
                if budget.allow <= 0 and budget.reset_at > now:
                    left = budget.reset_at - now
                    reason = f"provider's {name} limit resets in {describe_hint(left)}"
        rate = self.rate
        return (None if math.isinf(rate) else rate * 60.0), self.source, left, reason
