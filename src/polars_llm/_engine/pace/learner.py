"""The rate to send at when a provider's limit is unknown: learned from its answers.

A fast start: the pace begins at :data:`START_RATE` (256 requests/s: a concurrency of 64 is full within a
quarter of a second, so a small cell at any latency pays next to nothing) and quadruples every round trip
while answers succeed and nothing was refused (then doubles). An unknown cap therefore costs the few
requests sent in the round trip of its first refusals, not a whole concurrency sent at once. The first
convincing rate-limit refusals (the density guard below) or the first limit headers end the start: the rate
settles just under what the server *admitted* — measured from our own sends before the refusal (sends minus
refusals, per second, over the provider's window when its waits tell how long that is; what is still in
flight counts as admitted, and nothing sent after the refused request counts; or, when what was sent at the
current rate is refused steadily but mostly admitted, that rate times the admitted share — the window can
still hold a bucket's first burst) — then probes upwards again, first towards what was admitted, then in
steps that double while answers keep succeeding. Above what was admitted, a few refusals (a binomial tail
under 1 %, under 5 % at the end of a period) end the probe.

Refusals with next to nothing admitted in the window (a key whose window is still full, an upstream
shedding load, an outage) are a *wall*: there is no admitted rate to settle under, so the rate is left
as it was and everybody waits instead (the provider's hint, else a backoff that doubles with each wall
in a row, see :data:`WALL_BACKOFF`); recovery takes the wait, not a climb from a collapsed rate.

The density guard: a cut needs refusals that the *background* share — what a busy shared provider
refuses whatever our rate, measured in the start and right after each cut — explains with a
probability under 1 % (binomial tail), or a wall (three refusals in a row, above the background); a
refusal that says our budget is spent (remaining 0, in its limit headers) is a sure sign by itself.
Refusals of requests sent before the last cut never count. Scattered 429s therefore neither collapse
the rate nor make everybody wait.

Everything is driven by an injectable clock; the tests run servers of every shape against it (see
``tests/test_pacer.py``).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["START_RATE", "WALL_BACKOFF", "RateLearner", "Ticket", "wall_backoff"]

log = logging.getLogger("polars_llm.pacer")

Clock = Callable[[], float]

START_RATE = 256.0  # requests/s before anything is known; ×4 per round trip until a refusal, then ×2
WALL_BACKOFF = (0.5, 8.0)  # seconds everybody waits at a first wall without a hint, doubling up to…
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
_EXACT = 256  # sends and refusals kept exactly


class _Ring:
    """Counts per ``SLOT`` seconds over the last few seconds (sends, refusals and successes, by send
    time)."""

    __slots__ = ("_last", "_last_refused", "_last_sent", "ok", "rejected", "sent")

    def __init__(self) -> None:
        self.sent = [0.0] * _RING
        self.rejected = [0.0] * _RING
        self.ok = [0.0] * _RING
        self._last = 0
        # the last sends and refusals, exactly: at a few requests per second, a slot cut in
        # proportion is off by a request, a fifth of a cap of 5
        self._last_sent: deque[float] = deque(maxlen=_EXACT)
        self._last_refused: deque[float] = deque(maxlen=_EXACT)

    def _advance(self, slot: int) -> None:
        if slot <= self._last:
            return
        for s in range(max(self._last + 1, slot - _RING + 1), slot + 1):
            i = s % _RING
            self.sent[i] = self.rejected[i] = self.ok[i] = 0.0
        self._last = slot

    def add_sent(self, t: float) -> None:
        slot = int(t / SLOT)
        self._advance(slot)
        self.sent[slot % _RING] += 1
        self._last_sent.append(t)

    def add_rejected(self, t: float) -> None:
        slot = int(t / SLOT)
        if self._last - slot < _RING - 1 and slot <= self._last:
            self.rejected[slot % _RING] += 1
        self._last_refused.append(t)

    def add_ok(self, t: float) -> None:
        slot = int(t / SLOT)
        if self._last - slot < _RING - 1 and slot <= self._last:
            self.ok[slot % _RING] += 1

    def admitted(self, at: float, horizon: float = HORIZON, *, after: int | None = None) -> float:
        """Requests sent in ``(at - horizon, at]`` and not refused, per second. What is still in
        flight counts as admitted: refusals come back first (often at once), successes after the
        generation. ``after``: how many were sent after ``at`` (of ``at``'s slot, only the sends up
        to ``at`` count); without it, that slot counts in proportion, as does the one the window's
        start cuts through."""
        if after is not None and (exact := self._exactly(at, horizon, after)) is not None:
            return exact
        sent, rejected = self.rate(self.sent, at, horizon), self.rate(self.rejected, at, horizon)
        hi = int(at / SLOT)
        if after is not None and self._last - _RING < hi <= self._last:
            later = sum(self.sent[s % _RING] for s in range(hi + 1, self._last + 1))
            in_slot = self.sent[hi % _RING]
            up_to_at = in_slot - min(in_slot, max(0.0, after - later))
            share = at / SLOT - hi if hi > int((at - horizon) / SLOT) else 0.0
            sent += (up_to_at - share * in_slot) / horizon  # the slot's sends before ``at``, exactly
        return max(0.0, sent - rejected)

    def _exactly(self, at: float, horizon: float, after: int) -> float | None:
        """:meth:`admitted` from the last sends and refusals, if they reach back to ``at - horizon``."""
        start, sends, refused = at - horizon, self._last_sent, self._last_refused
        if len(sends) == sends.maxlen and sends[0] > start:
            return None
        if len(refused) == refused.maxlen and min(refused) > start:
            return None
        n = 0
        for i, t in enumerate(reversed(sends)):
            if t <= start:
                break
            n += i >= after
        n -= sum(1 for t in refused if start < t <= at)
        return max(0, n) / horizon

    def rate(self, counts: list[float], at: float, horizon: float) -> float:
        """``counts`` (one of ``sent``, ``ok``, ``rejected``) in ``(at - horizon, at]``, per second."""
        start = at - horizon
        lo, hi = int(start / SLOT), int(at / SLOT)
        total = 0.0
        for s in range(max(lo, self._last - _RING + 1), min(hi, self._last) + 1):
            share = min(s + 1, at / SLOT) - max(s, start / SLOT)
            total += share * counts[s % _RING]
        return max(0.0, total) / horizon


def wall_backoff(walls: int) -> float:
    """How long everybody waits at the ``walls``-th wall in a row when the provider gave no hint.

    >>> [wall_backoff(n) for n in (1, 2, 3, 6)]
    [0.5, 1.0, 2.0, 8.0]
    """
    first, most = WALL_BACKOFF
    return min(most, first * 2.0 ** max(0, walls - 1))


@dataclass(frozen=True, slots=True)
class Ticket:
    """One send: when, its place in the send order, and the tokens sent before it (for headers)."""

    sent_at: float
    seq: int
    tokens_before: float
    tokens: float


class RateLearner:
    """The rate to send at when the provider's limit is unknown (see the module docstring).

    ``engaged=False`` starts unpaced (a client limit or announced budget is in charge) and engages at
    the first convincing rate-limit refusals.
    """

    def __init__(self, *, clock: Clock = time.monotonic, engaged: bool = True, start: float = START_RATE):
        now = clock()
        self._clock = clock
        self.rate = start if engaged else math.inf
        self.slow_start = engaged  # the fast start (the name TCP gives its own)
        self.ring = _Ring()
        self.srtt = 0.0
        self.horizon = HORIZON
        self._hint: float | None = None
        self._first_send: float | None = None
        self._holds: deque[tuple[float, float]] = deque(maxlen=8)
        self._followed = -math.inf
        self.last_cut = -math.inf
        self._cut_rate = math.inf  # the rate the last cut set
        self.ceiling = math.inf  # the admitted rate measured at the last cut
        self.cuts = 0
        self.strong_cut = False
        self.wall = False  # the last cut found nothing admitted: a wait, not a rate
        self.walls = 0  # walls in a row (no answer admitted since)
        self.limited_seen = 0
        self._step = STEP0
        self._limited_at = now
        self._limited_seq = 0
        self._sends = 0  # the send order: a ticket's ``seq`` is its place in it
        self._period_start = now
        self._period_sent = 0
        self._ok = 0
        self._limited = 0
        self._quiet: deque[tuple[int, int]] = deque(maxlen=12)  # (429s, answers) under the ceiling
        self._quiet_period = False
        self._since_cut = 99
        self._recent: deque[bool] = deque(maxlen=3)
        self.version = 0  # bumped on every change of rate
        self._changed_at = now

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
        self._sends += 1

    def _set(self, rate: float, why: str = "") -> None:
        if rate != self.rate:
            log.debug("%.3f rate %.2f -> %.2f/s %s", self._clock(), self.rate, rate, why)
            self.rate = rate
            self.version += 1
            self._changed_at = self._clock()

    def on_answer(
        self, ticket: Ticket, limited: bool, hint: float | None = None, *, spent: bool = False
    ) -> bool:
        """An answer to ``ticket``: ``limited`` if the provider refused it for rate (``hint``: the wait
        it asked for; ``spent``: it said our budget is spent, a sure sign whatever the background).
        True if it cut the rate."""
        now = self._clock()
        self._hint = hint if limited else None
        if limited:
            self.ring.add_rejected(ticket.sent_at)
            self.limited_seen += 1
            if self.limited_seen == 1 and hint is not None and self._first_send is not None:
                # A refusal saying "wait h s" comes from a window at least that long; the first one,
                # soon after the start and asking a wait longer than the run's age, comes from a window
                # still holding our very first request: it is about h + that request's age.
                age = ticket.sent_at - self._first_send
                if age <= hint and age < 10.0:
                    self.horizon = min(MAX_HORIZON, max(self.horizon, hint + age))
        else:
            self.ring.add_ok(ticket.sent_at)
            rtt = now - ticket.sent_at
            self.srtt = rtt if self.srtt == 0 else 0.875 * self.srtt + 0.125 * rtt
        if ticket.sent_at < self.last_cut:
            return False  # sent at the old rate: says nothing about the new one
        self._recent.append(limited)
        if limited:
            self._limited += 1
            self._limited_at, self._limited_seq = ticket.sent_at, ticket.seq
            evidence = 2 if spent else self._evidence()
            if evidence > 1 or (evidence and (self._known_background or self._probing)):
                self._cut(now, ticket.sent_at, strong=evidence > 1)
                return True
            if self.slow_start:  # one refusal ends the start without a cut (it may be the background)
                self.slow_start = False
                self.ceiling = self.rate
                self._step = PROBE0
        else:
            self._ok += 1
            self.walls = 0
        if now - self._period_start >= self._period():
            return self._evaluate(now)
        return False

    def _period(self) -> float:
        if math.isinf(self.rate):
            return 1.0
        if self.slow_start:  # grows once per round trip (answers come back at the new rate)
            return min(2.0, max(0.05, self.srtt))
        return min(MAX_HORIZON, max(self.horizon, 2.0 * self.srtt, 30.0 / self.rate))

    @property
    def _known_background(self) -> bool:
        return sum(n for _, n in self._quiet) >= 60

    @property
    def background(self) -> float:
        """The 429 share seen in the start and right after each cut (at the rate it settled on): what
        a busy shared provider refuses whatever our rate (at most 10 %), as opposed to what our own
        probing causes. 2 % is assumed until enough of those answers are known."""
        if not self._known_background:
            return PRIOR_BACKGROUND
        limited, answers = sum(k for k, _ in self._quiet), sum(n for _, n in self._quiet)
        return max(0.005, min(MAX_BACKGROUND, limited / answers))

    def _above_background(self) -> bool:
        """The share of 429s in this period is clearly above the background (the density guard)."""
        n = self._ok + self._limited
        if n == 0:
            return False
        return self._limited / n > self.background + self._noise(n)

    def _noise(self, n: int) -> float:
        """2.5 standard deviations of the background share over ``n`` answers."""
        b = self.background
        return 2.5 * math.sqrt(b * (1.0 - b) / n)

    def _evidence(self) -> int:
        """How sure the 429s of this period are about our rate: 0 not yet, 1 somewhat, 2 sure.

        Sure: the last answers were all refused, or refusals that the background share explains with
        a probability under 0.1 %; somewhat: under 1 %.
        """
        recent = self._recent
        if len(recent) == recent.maxlen and all(recent) and self._above_background():
            return 2
        tail = self._tail()
        return 2 if tail < 1e-3 else 1 if tail < 1e-2 else 0

    def _tail(self) -> float:
        """The probability that the background share gives this period's refusals (or more)."""
        n, k = self._ok + self._limited, self._limited
        if k < 2:
            return 1.0
        p = self.background
        term = below = (1.0 - p) ** n  # P(fewer than k refusals among n at the background share)
        for i in range(k - 1):
            term *= (n - i) / (i + 1) * p / (1.0 - p)
            below += term
        return 1.0 - below

    @property
    def _probing(self) -> bool:
        """Sending above the rate the server admitted at the last cut."""
        return self.cuts > 0 and not self.slow_start and self.rate > self.ceiling

    def _evaluate(self, now: float) -> bool:
        n = self._ok + self._limited
        if n == 0 or (n < 10 and not self.slow_start):
            return False  # too few answers to judge: the period goes on
        binding = self._period_sent >= 0.6 * self.rate * (now - self._period_start)
        cut = False
        strong = self._evidence() > 1 or self._limited / n > self.background + 2 * self._noise(n)
        dense = self._above_background() and (strong or self._known_background)
        probe_failed = self._probing and self._tail() < 0.05  # above what it admitted: a few suffice
        if self._limited and (dense or probe_failed):
            self._cut(now, self._limited_at, strong=strong)  # measured where the server refused
            cut = True
        elif binding and not math.isinf(self.rate) and now - self._followed > self._period():
            if self.slow_start:
                self._set(self.rate * (4.0 if self.limited_seen == 0 else 2.0), "fast start")
            elif self.rate < RECOVER * self.ceiling:  # back up towards what was admitted
                self._set(min(RECOVER * self.ceiling, self.rate * (1.0 + STEP0)), "recover")
            elif self._step == 0:  # there: one more clean period before probing above it
                self._step = PROBE0
            else:  # above it: probe, faster while the answers keep coming
                self._set(self.rate * (1.0 + self._step), f"probe +{self._step:.0%}")
                self._step = min(MAX_STEP, self._step * 2.0)
        if not cut:
            self._new_period(now)
        return cut

    def _new_period(self, now: float, *, record: bool = True) -> None:
        n = self._ok + self._limited
        if record and self._quiet_period and n and self._limited <= 2 * MAX_BACKGROUND * n:
            self._quiet.append((self._limited, n))
        # in the start (or unpaced), or in the first two periods after a cut (at the rate it settled on):
        # periods whose refusals are the provider's background, not our rate
        self._quiet_period = self.slow_start or math.isinf(self.rate) or self._since_cut < 2
        self._since_cut += 1
        self._period_start = now
        self._period_sent = self._ok = self._limited = 0

    def _cut(self, now: float, at: float, *, strong: bool) -> None:
        """Settle under the rate admitted around ``at`` (a refusal's send time: the window was full).

        A ``strong`` signal takes the measurement as it is; a weak one — a few refusals that could still
        be a busy provider's background — cuts to at most 15 % under what was really sent.
        """
        hint = self._hint
        if hint is not None:
            self.horizon = min(MAX_HORIZON, max(self.horizon, hint))
        h = self.horizon
        admitted = self.ring.admitted(at, h, after=max(0, self._sends - self._limited_seq))
        n = self._ok + self._limited
        why = f"cut: admitted {admitted:.1f}/s, {self._limited}/{n} refused, background {self.background:.3f}"
        if admitted * h < 2.0:
            # next to nothing got through (a key whose window is still full, an upstream shedding load,
            # an outage): there is no admitted rate to settle under. A wait, not a rate: the pacer holds
            # everybody (the provider's hint, else a backoff that grows with each wall in a row) and the
            # sends resume at the rate they had, so recovery takes the wait, not a climb from nothing
            self._wall(now, why)
            return
        steady = self._admitted_at_this_rate(at)
        if steady is not None and steady < 0.9 * admitted:  # (not the lower of two noisy measures)
            admitted = steady
            why += f"; {steady:.1f}/s at this rate"
        target = max(MIN_RATE, BETA * admitted)
        if math.isinf(self.rate):
            self._set(target, why)
        elif not strong:
            # at most 15 % under what we really sent (in a ramp, far below the nominal rate)
            scale = h / max(0.1 * h, h - self._held_within(at - h, at))  # per second we could send
            before = min(self.rate, self.ring.rate(self.ring.sent, at, h) * scale)
            target = max(target, 0.85 * before)
            if target < before:
                self._set(target, why + " (weak)")
            admitted = min(admitted, before)
        elif target < self.rate:
            self._set(target, why)
        self.strong_cut, self.wall = strong, False
        self.slow_start = False
        self._cut_rate = target  # announced budgets may not lift the pace above it for a while
        self._step = 0.0
        self.ceiling = admitted
        self._ended(now)

    def _wall(self, now: float, why: str) -> None:
        log.debug("%.3f wall at %.2f/s: %s", now, self.rate, why)
        self.strong_cut, self.wall = True, True
        self.walls += 1
        self._ended(now)

    def _ended(self, now: float) -> None:
        """A cut or a wall: what was sent before it says nothing about what comes after."""
        self.last_cut = now
        self.cuts += 1
        self._recent.clear()
        self._new_period(now, record=False)  # the period that ended in a cut is no background
        self._quiet_period, self._since_cut = True, 1

    def _admitted_at_this_rate(self, at: float) -> float | None:
        """The rate admitted among what was sent at the current rate (since it was set), if that was
        most of it.

        The horizon can still hold what a server let through before (a bucket's first burst, a
        reserve drained by a probe) and overstate its rate; a cap under ours that refuses steadily
        is measured here instead. Mostly refused is a full window's echo (what an overshoot left in
        a sliding window): that passes, and says nothing about the rate.
        """
        if self.horizon > HORIZON:
            return None  # a long window: what it admits now replays what it admitted a window ago
        start = math.ceil(self._changed_at / SLOT) * SLOT  # whole slots: none holds older sends
        end = min(at, self._clock() - 1.5 * self.srtt)  # sent long enough ago to be answered
        since = end - start
        if since < 3 * SLOT:
            return None
        ring = self.ring
        sent, ok, refused = (ring.rate(c, end, since) for c in (ring.sent, ring.ok, ring.rejected))
        if not sent or refused * since < 5 or (ok + refused) * since < 10 or ok < 0.6 * (ok + refused):
            return None  # (under 5 refusals or 10 answers in all: too few to tell a share)
        could = max(0.1 * since, since - self._held_within(start, end))
        return sent * ok / (ok + refused) * since / could

    def note_hold(self, start: float, end: float) -> None:
        """Nobody could send between ``start`` and ``end`` (a wait the provider asked for): rates
        measured over that stretch count only the time we could send."""
        self._holds.append((start, end))

    def _held_within(self, lo: float, hi: float) -> float:
        held, last = 0.0, lo
        for start, end in sorted(self._holds):
            start, end = max(start, last), min(end, hi)
            if end > start:
                held += end - start
                last = end
        return held

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
            rate = min(rate, self._cut_rate)
        self._followed = now  # the provider's figures set the pace: no probing of our own meanwhile
        self.slow_start = False
        self._set(max(MIN_RATE, rate))
