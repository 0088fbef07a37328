"""Rate control: learn the rate a provider admits, or take it from its limit headers, and pace to it.

Three parts, all driven by an injectable clock (unit tests use a fake one, no sleeps):

* :class:`RateLearner` — with no limit known, requests are paced at a rate that starts gently, doubles
  while answers succeed (slow start), and on rate-limit answers settles just under the rate the server
  *admitted* in the second before them (counted from our own sends, so it is right however bursty we
  were), then probes upwards again in small, then growing, steps. A density guard keeps scattered 429s
  of a busy shared provider from collapsing the rate: a cut needs a 429 share clearly above the share
  seen in recent periods (the background), and 429s of requests sent before the last cut never count.
* :class:`Announced` — a budget a provider announced in headers (``remaining`` now, back in ``reset``
  seconds): never send more than what remains before the reset, spread it evenly (remaining ÷ time to
  reset), and bound the pace by ``limit`` ÷ the longest reset seen (the provider's own long-run rate).
* :class:`Pause` — a moment before which nobody sends, with the reason shown on the progress bar.

:class:`Pacer` combines them for the engine; ``acquire`` costs a few float operations when no wait is
needed (no lock, no task switch), and waiters wake early when the rate changes.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from ._limits import Budget, Limits, describe_hint

__all__ = ["Announced", "Pacer", "Pause", "RateLearner", "Ticket"]

log = logging.getLogger("polars_llm.pacer")

Clock = Callable[[], float]

START_RATE = 8.0  # requests/s before anything is known: gentle
MIN_RATE = 0.05
MAX_BACKGROUND = 0.1  # the largest share of scattered 429s taken for a provider's background
PRIOR_BACKGROUND = 0.02  # assumed until enough answers are known
BETA = 0.95  # settle this far under the admitted rate
STEP0 = 0.03  # step back up towards the admitted rate after a cut...
RECOVER = 0.97  # ...up to this share of it
PROBE0 = 0.02  # first step above it; doubles each clean period
MAX_STEP = 0.5
SLOT = 0.1  # seconds per ring slot
HORIZON = 1.0  # seconds of sends the admitted rate is measured over, at least
MAX_HORIZON = 60.0  # ...and at most (a provider's window, learned from its waits)
_RING = 640  # slots kept (64 s)


class _Ring:
    """Counts per ``SLOT`` seconds over the last few seconds (sends and rejections, by send time)."""

    __slots__ = ("_last", "rejected", "sent")

    def __init__(self) -> None:
        self.sent = [0.0] * _RING
        self.rejected = [0.0] * _RING
        self._last = 0

    def _advance(self, slot: int) -> None:
        if slot <= self._last:
            return
        for s in range(max(self._last + 1, slot - _RING + 1), slot + 1):
            i = s % _RING
            self.sent[i] = self.rejected[i] = 0.0
        self._last = slot

    def add_sent(self, t: float, n: float = 1.0) -> None:
        slot = int(t / SLOT)
        self._advance(slot)
        self.sent[slot % _RING] += n

    def add_rejected(self, t: float) -> None:
        slot = int(t / SLOT)
        if self._last - slot < _RING - 1 and slot <= self._last:
            self.rejected[slot % _RING] += 1

    def admitted(self, at: float, horizon: float = HORIZON, *, rejected: bool = True) -> float:
        """Requests sent in ``(at - horizon, at]`` and not rejected (or all sent, ``rejected=False``),
        per second; the slot that the window's start cuts through counts in proportion."""
        start = at - horizon
        lo, hi = int(start / SLOT), int(at / SLOT)
        total = 0.0
        for s in range(max(lo, self._last - _RING + 1), min(hi, self._last) + 1):
            i = s % _RING
            share = 1.0 if s > lo else (s + 1) - start / SLOT
            total += share * (self.sent[i] - (self.rejected[i] if rejected else 0.0))
        return max(0.0, total) / horizon


@dataclass(frozen=True, slots=True)
class Ticket:
    """One send: when, its place in the send order, and the tokens sent before it (for headers)."""

    sent_at: float
    seq: int
    tokens_before: float
    tokens: float


class RateLearner:
    """The rate to send at when the provider's limit is unknown (see the module docstring).

    ``engaged=False`` starts unlimited (a client limit or announced budget is in charge) and engages
    at the first rate-limit answer.
    """

    def __init__(self, *, clock: Clock = time.monotonic, engaged: bool = True, start: float = START_RATE):
        now = clock()
        self._clock = clock
        self.rate = start if engaged else math.inf
        self.slow_start = engaged
        self.ring = _Ring()
        self.srtt = 0.0
        self.horizon = HORIZON
        self._hint: float | None = None
        self._first_send: float | None = None
        self._followed = -math.inf
        self.last_cut = -math.inf
        self.ceiling = math.inf  # the admitted rate measured at the last cut
        self.cuts = 0
        self.strong_cut = False
        self.limited_seen = 0
        self._step = STEP0
        self._limited_at = now
        self._period_start = now
        self._period_sent = 0
        self._ok = 0
        self._limited = 0
        self._quiet: deque[tuple[int, int]] = deque(maxlen=12)  # (429s, answers) under the ceiling
        self._quiet_period = False
        self._since_cut = 99
        self._recent: deque[bool] = deque(maxlen=3)
        self.version = 0  # bumped on every change of rate

    @property
    def crowded(self) -> bool:
        """The last answers (sent since the last cut) were all refused, well above the background:
        the provider wants everybody to wait, not just those rows."""
        recent = self._recent
        return len(recent) == recent.maxlen and all(recent) and self._above_background()

    # ---------------------------------------------------------------------------------------- feedback

    def on_send(self, now: float) -> None:
        if self._first_send is None:
            self._first_send = now
        self.ring.add_sent(now)
        self._period_sent += 1

    def _set(self, rate: float, why: str = "") -> None:
        if rate != self.rate:
            log.debug("%.3f rate %.2f -> %.2f/s %s", self._clock(), self.rate, rate, why)
            self.rate = rate
            self.version += 1

    def on_answer(self, ticket: Ticket, limited: bool, hint: float | None = None) -> bool:
        """An answer to ``ticket``: ``limited`` if the provider refused it for rate (``hint``: the wait
        it asked for). True if it cut the rate."""
        now = self._clock()
        self._hint = hint if limited else None
        if limited:
            self.ring.add_rejected(ticket.sent_at)
            self.limited_seen += 1
        else:
            rtt = now - ticket.sent_at
            self.srtt = rtt if self.srtt == 0 else 0.875 * self.srtt + 0.125 * rtt
        if ticket.sent_at < self.last_cut:
            return False  # sent at the old rate: says nothing about the new one
        self._recent.append(limited)
        if limited:
            self._limited += 1
            self._limited_at = ticket.sent_at
            evidence = self._evidence()
            if evidence:
                self._cut(now, ticket.sent_at, strong=evidence > 1)
                return True
            if self.slow_start:  # one refusal ends doubling; more of them cut
                self.slow_start = False
                self.ceiling = self.rate
                self._step = PROBE0
        else:
            self._ok += 1
        if now - self._period_start >= self._period():
            return self._evaluate(now)
        return False

    def _period(self) -> float:
        if math.isinf(self.rate):
            return 1.0
        if self.slow_start:  # doubles once per round trip (answers come back at the new rate)
            return min(2.0, max(0.05, 1.5 * self.srtt, 2.0 / self.rate))
        return min(MAX_HORIZON, max(self.horizon, 2.0 * self.srtt, 30.0 / self.rate))

    @property
    def background(self) -> float:
        """The 429 share seen in slow start and right after each cut (at the rate it settled on): what
        a busy shared provider refuses whatever our rate (at most 10 %), as opposed to what our own
        probing causes. 2 % is assumed until enough of those answers are known."""
        limited = sum(k for k, _ in self._quiet)
        answers = sum(n for _, n in self._quiet)
        if answers < 60:
            return PRIOR_BACKGROUND
        return max(0.005, min(MAX_BACKGROUND, limited / answers))

    def _above_background(self) -> bool:
        """The share of 429s in this period is clearly above the background (the density guard)."""
        n = self._ok + self._limited
        if n == 0:
            return False
        return self._limited / n > self.background + self._noise(n)

    def _noise(self, n: int) -> float:
        """Two standard deviations of the background share over ``n`` answers."""
        b = self.background
        return 2.0 * math.sqrt(b * (1.0 - b) / n)

    def _evidence(self) -> int:
        """How sure the 429s of this period are about our rate: 0 not yet, 1 somewhat, 2 sure.

        Sure: the last answers were all refused, or refusals that the background share explains with
        a probability under 0.1 %; somewhat: under 1 %.
        """
        recent = self._recent
        if len(recent) == recent.maxlen and all(recent) and self._above_background():
            return 2
        n, k = self._ok + self._limited, self._limited
        if k < 2:
            return 0
        p = self.background
        term = below = (1.0 - p) ** n  # P(fewer than k refusals among n at the background share)
        for i in range(k - 1):
            term *= (n - i) / (i + 1) * p / (1.0 - p)
            below += term
        tail = 1.0 - below
        return 2 if tail < 1e-3 else 1 if tail < 1e-2 else 0

    def _evaluate(self, now: float) -> bool:
        n = self._ok + self._limited
        if n < 10 and not self.slow_start:
            return False  # too few answers to judge: the period goes on
        binding = self._period_sent >= 0.6 * self.rate * (now - self._period_start)
        cut = False
        if self._limited and self._above_background():
            strong = self._evidence() > 1 or self._limited / n > self.background + 2 * self._noise(n)
            self._cut(now, self._limited_at, strong=strong)  # measured where the server refused
            cut = True
        elif binding and not math.isinf(self.rate) and now - self._followed > self._period():
            if self.slow_start:
                self._set(self.rate * 2.0, "slow start")
            elif self.rate < RECOVER * self.ceiling:  # back up towards what was admitted
                self._set(min(RECOVER * self.ceiling, self.rate * (1.0 + STEP0)), "recover")
            else:  # above it: probe, faster while the answers keep coming
                self._set(self.rate * (1.0 + self._step), f"probe +{self._step:.0%}")
                self._step = min(MAX_STEP, self._step * 2.0)
        if not cut:
            self._new_period(now)
        return cut

    def _new_period(self, now: float) -> None:
        n = self._ok + self._limited
        if self._quiet_period and n and self._limited <= 2 * MAX_BACKGROUND * n:  # not a wall of 429s
            self._quiet.append((self._limited, n))
        # in slow start, or in the first two periods after a cut (at the rate it settled on)
        self._quiet_period = self.slow_start or self._since_cut < 2
        self._since_cut += 1
        self._period_start = now
        self._period_sent = self._ok = self._limited = 0

    def _cut(self, now: float, at: float, *, strong: bool) -> None:
        """Settle under the rate admitted around ``at`` (a refusal's send time: the window was full).

        A ``strong`` signal takes the measurement as it is (and learns the window's length from the
        refusals' wait when they form a wall); a weak one — a few refusals that could still be a busy
        provider's background — cuts to at most 25 % under what was really sent.
        """
        hint = self._hint
        recent = self._recent
        if hint is not None and len(recent) == recent.maxlen and all(recent):  # a wall, not a scatter
            # A refusal saying "wait h s" comes from a window at least that long; at the first one the
            # window still holds our very first request, so it is about h + (time since that request).
            span = hint + (at - self._first_send if self.cuts == 0 and self._first_send else 0.0)
            self.horizon = min(MAX_HORIZON, max(self.horizon, span))
        h = self.horizon
        if 0 < self.rate < math.inf:  # at low rates, over enough requests to count
            h = min(MAX_HORIZON, max(h, 20.0 / self.rate))
        admitted = self.ring.admitted(at, h)
        if self._first_send is not None and at - self._first_send >= 2 * h:
            admitted = min(admitted, self.ring.admitted(at, 2 * h))  # a burst must not pass for the rate
        target = max(MIN_RATE, BETA * admitted)
        n = self._ok + self._limited
        why = f"cut: admitted {admitted:.1f}/s, {self._limited}/{n} refused, background {self.background:.3f}"
        if math.isinf(self.rate):
            self._set(target, why)
        elif not strong:
            # at most 25 % under what we really sent (in a ramp, far below the nominal rate)
            before = min(self.rate, self.ring.admitted(at, h, rejected=False))
            target = max(target, 0.75 * before)
            if target < before:
                self._set(target, why + " (weak)")
            admitted = min(admitted, before)
        elif target < self.rate:
            if hint is None and target < 0.25 * self.rate:
                # next to nothing got through and no wait was named: maybe a window longer than we
                # measure; halve rather than trust the measurement
                target = 0.5 * self.rate
            self._set(target, why)
        self.strong_cut = strong
        self.slow_start = False
        self._step = PROBE0
        self.ceiling = admitted
        self.last_cut = now
        self.cuts += 1
        self._recent.clear()
        self._new_period(now)
        self._quiet_period, self._since_cut = True, 1

    def release(self) -> None:
        """Stop pacing on our own (a budget announced by the provider is in charge), unless 429s
        already taught us a rate."""
        if self.cuts == 0:
            self.slow_start = False
            self._set(math.inf)

    def follow(self, rate: float) -> None:
        """Take ``rate`` announced by the provider (not above it after a recent cut of our own)."""
        now = self._clock()
        if now - self.last_cut < 10.0:
            rate = min(rate, self.rate)
        self._followed = now  # the provider's figures set the pace: no probing of our own meanwhile
        self.slow_start = False
        self._set(max(MIN_RATE, rate))


class Announced:
    """A budget announced in headers: ``allow`` more before ``reset_at``, at most ``limit`` per window.

    >>> a = Announced(clock=lambda: 0.0)
    >>> a.observe(Budget(limit=60, remaining=30, reset=10.0), used_since=0)
    3.0
    """

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.allow = math.inf
        self.reset_at = -math.inf
        self.limit: float | None = None
        self.longest_reset = 0.0
        self.rate = math.inf

    def observe(self, budget: Budget, used_since: float) -> float:
        """Take a fresh announcement (``used_since``: what we sent after the request it answers).

        Returns the pace it implies (per second): what remains ÷ time to reset, bounded by
        ``limit`` ÷ the longest reset seen.
        """
        now = self._clock()
        remaining = budget.remaining if budget.remaining is not None else 0.0
        reset = budget.reset if budget.reset is not None else 0.0
        self.allow = max(0.0, remaining - used_since)
        self.reset_at = now + reset
        self.limit = budget.limit
        self.longest_reset = max(self.longest_reset, reset)
        rate = max(self.allow, 1.0) / reset if reset > 0 else math.inf
        if self.limit:  # a little under the long-run rate (no window shorter than 1 s is assumed)
            rate = min(rate, 0.97 * max(self.limit, 1.0) / max(self.longest_reset, 1.0))
        self.rate = rate
        return rate

    def exhaust(self, reset: float) -> None:
        """Nothing left until ``reset`` seconds from now (a refusal said so)."""
        self.allow = 0.0
        self.reset_at = self._clock() + reset

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
        if limits is not None:
            self._observe(ticket, limits, limited)
        cut = self.learner.on_answer(ticket, limited, hint)
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

        Everybody waits for the provider's ``hint`` when this refusal cut the rate for sure or refusals
        crowd in (several in a row, above the background); without a hint, crowded ones wait ``backoff``.
        Scattered refusals make only their own row wait.
        """
        cut = self.answered(ticket, limited=True, limits=limits, hint=hint)
        if not ((cut and self.learner.strong_cut) or self.learner.crowded):
            return 0.0
        if hint is not None and hint > 0:
            self.hold(hint, f"provider asked to wait {describe_hint(hint)}")
            return hint
        if self.learner.crowded:
            self.hold(backoff, f"rate limited: backing off {describe_hint(backoff)}")
            return backoff
        return 0.0

    def _observe(self, ticket: Ticket, limits: Limits, limited: bool) -> None:
        if limited:  # a refusal tells when the spent budget comes back, not the pace to keep
            for budget, announced in ((limits.requests, self.requests), (limits.tokens, self.tokens)):
                if budget is not None and budget.remaining is not None and budget.remaining < 1:
                    announced.exhaust(budget.reset or 0.0)
                    self._next = max(self._next, announced.reset_at)  # no burst when it comes back
            return
        if limits.requests is not None and limits.requests.usable:
            self.learner.follow(self.requests.observe(limits.requests, self._seq - ticket.seq))
            self.source = "announced"
        if limits.tokens is not None and limits.tokens.usable:
            used = self._tokens_sent - ticket.tokens_before - ticket.tokens
            self._token_rate = self.tokens.observe(limits.tokens, used)
            if limits.requests is None:
                self.learner.release()
                self.source = "announced"

    def hold(self, seconds: float, reason: str) -> None:
        """Nobody sends for ``seconds`` (a provider's wait, or our own backoff after a burst of 429s)."""
        self.pause.extend(seconds, reason)
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
