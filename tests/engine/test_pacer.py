"""The rate controller under a fake clock: no sleeps, no timing asserts.

Pure-Python servers (a sliding log, fixed windows, a token bucket, scattered 429s, limit headers) answer
a simulated client driven by :class:`polars_llm._engine.pace.pacer.Pacer` the way the engine drives it: take a
slot (``try_take``), record the send, feed each answer back after the latency, and make everybody wait when
429s crowd in with a retry hint. Every run is deterministic.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest

from polars_llm._engine.pace.learner import START_RATE, RateLearner, Ticket, wall_backoff
from polars_llm._engine.pace.pacer import Announced, Pacer
from polars_llm._transport.limit_headers import AnnouncedLimit, Limits


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ----------------------------------------------------------------------------------- server models


class SlidingLog:
    def __init__(self, limit: int, window: float = 1.0) -> None:
        self.limit, self.window, self.log = limit, window, deque[float]()

    def admit(self, now: float) -> tuple[bool, float]:
        while self.log and self.log[0] <= now - self.window:
            self.log.popleft()
        if len(self.log) >= self.limit:
            return False, self.log[len(self.log) - self.limit] + self.window - now
        self.log.append(now)
        return True, 0.0

    def budget(self, now: float) -> AnnouncedLimit:  # remaining now; reset = when the oldest leaves
        reset = self.log[0] + self.window - now if self.log else 0.0
        return AnnouncedLimit(self.limit, self.limit - len(self.log), reset)


class FixedWindow:
    def __init__(self, limit: int, window: float = 1.0) -> None:
        self.limit, self.window, self.index, self.count = limit, window, -1, 0

    def admit(self, now: float) -> tuple[bool, float]:
        index = math.floor(now / self.window)
        if index != self.index:
            self.index, self.count = index, 0
        if self.count >= self.limit:
            return False, (index + 1) * self.window - now
        self.count += 1
        return True, 0.0

    def budget(self, now: float) -> AnnouncedLimit:
        return AnnouncedLimit(self.limit, self.limit - self.count, (self.index + 1) * self.window - now)


class Bucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst, self.level, self.at = rate, burst, burst, None

    def admit(self, now: float) -> tuple[bool, float]:
        if self.at is not None:
            self.level = min(self.burst, self.level + (now - self.at) * self.rate)
        self.at = now
        if self.level < 1:
            return False, (1 - self.level) / self.rate
        self.level -= 1
        return True, 0.0

    def budget(self, now: float) -> AnnouncedLimit:  # OpenAI's meaning: reset = until full again
        return AnnouncedLimit(self.burst, math.floor(self.level), (self.burst - self.level) / self.rate)


class Scattered:
    """No cap at all, but a busy shared provider refuses a share of requests at random."""

    def __init__(self, share: float, seed: int = 1) -> None:
        self.share, self.rng = share, random.Random(seed)

    def admit(self, now: float) -> tuple[bool, float]:
        return (False, 1.0) if self.rng.random() < self.share else (True, 0.0)


@dataclass
class Run:
    sent: list[tuple[float, bool]] = field(default_factory=list)  # (send time, refused)
    held: float = 0.0

    def share_429(self, since: float = -math.inf) -> float:
        part = [r for t, r in self.sent if t >= since]
        return sum(r for r in part) / len(part)

    def admitted_rate(self, t0: float, t1: float) -> float:
        return sum(1 for t, r in self.sent if t0 <= t < t1 and not r) / (t1 - t0)


def simulate(
    server: Any,
    seconds: float,
    *,
    latency: float = 0.0,
    concurrency: int = 64,
    headers: str = "none",
    pacer: Pacer | None = None,
    clock: FakeClock | None = None,
    changes: dict[float, Any] | None = None,
    instant_refusals: bool = False,
) -> tuple[Run, Pacer, FakeClock]:
    """Drive a pacer against ``server`` for ``seconds`` of fake time (``headers``: none, 429, all).

    ``instant_refusals``: 429s come back at once (no generation), successes after ``latency``.
    """
    clock = clock or FakeClock()
    pacer = pacer or Pacer(clock=clock)
    run = Run()
    start = clock.now
    pending: list[tuple[float, int, Ticket, bool, float, Limits | None]] = []
    todo = dict(changes or {})
    while clock.now < start + seconds:
        for at in [a for a in todo if clock.now >= start + a]:
            server = todo.pop(at)(server)
        while pending and pending[0][0] <= clock.now:
            _, _, ticket, refused, hint, limits = heapq.heappop(pending)
            if refused:
                run.held += pacer.refused(ticket, hint=hint, limits=limits, backoff=0.5)
            else:
                pacer.answered(ticket, limited=False, limits=limits)
        if len(pending) >= concurrency:
            clock.now = pending[0][0]
            continue
        wait = pacer.try_take(1.0)
        if wait > 0:
            clock.now = min(clock.now + wait, pending[0][0]) if pending else clock.now + wait
            continue
        ticket = pacer.sent(1.0)
        admitted, hint = server.admit(clock.now)
        limits = None
        if headers == "all" or (headers == "429" and not admitted):  # as the server saw it then
            budget = server.budget(clock.now)
            remaining = budget.remaining if admitted else 0
            limits = Limits(AnnouncedLimit(budget.limit, remaining, hint or budget.reset), None, "test")
        run.sent.append((clock.now, not admitted))
        answer_at = clock.now + (1e-3 if instant_refusals and not admitted else latency)
        heapq.heappush(pending, (answer_at, ticket.seq, ticket, not admitted, hint, limits))
        clock.now += 1e-5  # sending costs a little time
    return run, pacer, clock


# ------------------------------------------------------------------------------------------ learning


def test_the_start_is_fast_and_grows_every_round_trip() -> None:
    """Nothing is known at the start: the pace begins at 256/s (a concurrency of 64 is full within a
    quarter of a second, so a 100-row cell at 1 s latency takes two round trips, as a plain loop does) and
    quadruples every round trip while nothing is refused."""
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    assert pacer.rate == START_RATE
    assert pacer.try_take() == 0.0
    pacer.sent(1.0)
    assert pacer.try_take() == pytest.approx(1 / START_RATE)  # the second request waits 4 ms
    run, pacer, clock = simulate(SlidingLog(10**9), 3.0, latency=1.0, concurrency=64)
    t0 = clock.now - 3.0
    assert run.share_429() == 0
    assert max(t for t, _ in run.sent[:64]) - t0 <= 64 / START_RATE + 1e-3  # all 64 out in 0.25 s
    run, pacer, clock = simulate(SlidingLog(10**9), 3.0, latency=1.0, concurrency=10**5)
    assert run.share_429() == 0 and pacer.rate >= 16 * START_RATE  # x4 at each of two round trips
    run, pacer, _ = simulate(SlidingLog(10**9), 1.0, latency=0.0, concurrency=64)
    assert pacer.rate >= 4**5 * START_RATE  # at zero latency, a round trip is the 50 ms minimum period


def test_an_unknown_cap_costs_a_few_refusals_not_a_concurrency() -> None:
    """A fast start meets an unknown cap: the refusals before the cut are the few sent in the round
    trip of the first ones (here instant), not the whole concurrency sent at once."""
    for server, cap in (
        (lambda: SlidingLog(50), 50),
        (lambda: Bucket(50, 50), 50),
        (lambda: SlidingLog(5), 5),
    ):
        run, pacer, clock = simulate(server(), 30.0, latency=0.0, concurrency=256, instant_refusals=True)
        start = clock.now - 30.0
        assert sum(r for t, r in run.sent if t < start + 1.0) <= 10, cap
        assert 0.8 * cap <= pacer.rate <= 1.2 * cap


@pytest.mark.parametrize("instant_refusals", [False, True], ids=["slow 429s", "instant 429s"])
@pytest.mark.parametrize(
    ("name", "server", "cap", "latency"),
    [
        ("sliding 5/s, 500 ms", lambda: SlidingLog(5), 5, 0.5),
        ("sliding 50/s, 500 ms", lambda: SlidingLog(50), 50, 0.5),
        ("sliding 50/s", lambda: SlidingLog(50), 50, 0.0),
        ("sliding 500/s, 50 ms", lambda: SlidingLog(500), 500, 0.05),
        ("fixed 50/s, 50 ms", lambda: FixedWindow(50), 50, 0.05),
        ("bucket 50/s", lambda: Bucket(50, 50), 50, 0.0),
        ("sliding 10 s window, 50/s", lambda: SlidingLog(500, 10.0), 50, 0.05),
    ],
)
def test_settles_just_under_the_cap(
    name: str, server: Any, cap: float, latency: float, instant_refusals: bool
) -> None:
    seconds = 240 if cap < 10 else 90
    skip = 20.0
    run, pacer, clock = simulate(
        server(), seconds, latency=latency, concurrency=256, instant_refusals=instant_refusals
    )
    start = clock.now - seconds
    assert run.share_429(since=start + skip) <= 0.03, name
    assert run.admitted_rate(start + skip, clock.now) >= 0.9 * cap, name
    assert 0.8 * cap <= pacer.rate <= 1.2 * cap, name


def test_a_buckets_first_burst_does_not_hold_the_rate_above_its_refill() -> None:
    """A token bucket lets its whole size through at once: the second before the first refusal
    admits more than the refill rate. Once what is sent at the settled rate is refused steadily, the
    learner takes the admitted share of it, instead of waiting for the burst to leave its horizon."""
    for latency in (0.0, 0.0014, 0.005, 0.01):
        run, _, _ = simulate(Bucket(50, 50), 10.0, latency=latency, concurrency=256)
        first = next(t for t, refused in run.sent if refused)
        after = [refused for t, refused in run.sent if first + 0.5 < t <= first + 2.0]
        assert sum(after) <= 0.04 * len(after), latency  # was 11-12 % for those 1.5 s
        assert run.admitted_rate(first + 0.5, first + 2.0) >= 0.85 * 50, latency


def test_a_cut_does_not_count_what_was_sent_after_the_refused_request() -> None:
    """Refusals come back first (often at once): the first cut of a fast ramp measures what was sent
    up to the refused request (here 100/s), not the burst sent after it, still in flight."""
    clock = FakeClock()
    learner = RateLearner(clock=clock)
    seq = iter(range(1, 10**6))

    def send() -> Ticket:
        learner.on_send(clock.now)
        return Ticket(clock.now, next(seq), 0.0, 1.0)

    for _ in range(100):  # 100/s for a second, each answered at once
        ticket = send()
        clock.now += 0.001
        learner.on_answer(ticket, limited=False)
        clock.now += 0.009
    clock.now += 0.005
    refused = [send() for _ in range(3)]
    for _ in range(57):  # the burst behind them
        send()
        clock.now += 0.0002
    assert any(learner.on_answer(t, limited=True) for t in refused)
    assert learner.rate <= 0.95 * 100 * 1.05  # (counting the burst as admitted: ~150/s)


@pytest.mark.parametrize("phase", [0.0, 0.02, 0.05, 0.07, 0.09])
def test_a_cut_at_a_few_requests_per_second_measures_the_admitted_rate_exactly(phase: float) -> None:
    """At a cap of 5/s one request is a fifth of the rate: counted in 0.1 s slots, the slot the
    window's start cuts through would make the measure 4-6/s depending on where the sends fall."""
    clock = FakeClock()
    clock.now += phase
    learner = RateLearner(clock=clock)
    seq = iter(range(1, 10**6))

    def send() -> Ticket:
        learner.on_send(clock.now)
        return Ticket(clock.now, next(seq), 0.0, 1.0)

    for _ in range(20):  # 5/s, every 0.2 s, each admitted
        learner.on_answer(send(), limited=False)
        clock.now += 0.2
    clock.now -= 0.15
    refused = []
    for _ in range(3):  # the window (at - 1 s, at] already holds five: refused
        refused.append(send())
        clock.now += 0.001
    assert any(learner.on_answer(t, limited=True) for t in refused)
    assert learner.ceiling == pytest.approx(5.0)
    assert learner.rate == pytest.approx(0.95 * 5.0)


def test_scattered_429s_neither_collapse_the_rate_nor_stall_the_run() -> None:
    run, pacer, _ = simulate(Scattered(0.05), 60.0, latency=0.05, concurrency=64)
    # no cap: the rate keeps growing despite 5 % refusals at random (from 8/s to well over 100/s in a
    # minute), and nobody is held for long
    assert pacer.rate > 150
    assert run.held <= 3.0
    assert 0.03 <= run.share_429() <= 0.07  # the provider's share, not ours


def test_a_cap_under_scattered_429s_is_still_found() -> None:
    class Both:
        def __init__(self) -> None:
            self.cap, self.noise = SlidingLog(50), Scattered(0.03)

        def admit(self, now: float) -> tuple[bool, float]:
            ok, hint = self.noise.admit(now)
            return self.cap.admit(now) if ok else (ok, hint)

    run, pacer, clock = simulate(Both(), 120.0, latency=0.05)
    assert 35 <= pacer.rate <= 60
    assert run.share_429(since=clock.now - 60) <= 0.03 + 0.035  # the background, and a little of ours


def test_cap_halved_then_doubled_is_followed_within_ten_seconds() -> None:
    def halve(server: SlidingLog) -> SlidingLog:
        server.limit = 50
        return server

    def double(server: SlidingLog) -> SlidingLog:
        server.limit = 100
        return server

    run, _, clock = simulate(SlidingLog(100), 90.0, latency=0.05, changes={30.0: halve, 60.0: double})
    start = clock.now - 90.0
    assert run.share_429(since=start + 5) <= 0.03
    assert run.admitted_rate(start + 31, start + 40) >= 0.9 * 50 * 0.9  # at the new cap after the cut
    assert run.admitted_rate(start + 69, start + 70) >= 0.9 * 100  # back up within 10 s of the rise


class Outage:
    """Everything refused until ``until`` (``hint``: the Retry-After it sends, 0 for none), then no cap."""

    def __init__(self, until: float, hint: float = 1.0) -> None:
        self.until, self.hint, self.fine = until, hint, SlidingLog(10**9)

    def admit(self, now: float) -> tuple[bool, float]:
        return (False, self.hint) if now < self.until else self.fine.admit(now)


class RefuseFirst:
    """The first ``n`` requests are refused (no hint), then everything is answered."""

    def __init__(self, n: int) -> None:
        self.left = n

    def admit(self, now: float) -> tuple[bool, float]:
        self.left -= 1
        return (self.left < 0, 0.0)


@pytest.mark.parametrize("hint", [1.0, 0.0], ids=["Retry-After 1", "no hint"])
def test_a_wall_of_429s_is_a_wait_not_a_rate(hint: float) -> None:
    """Everything refused for 3 s (an outage, a full window): nothing is admitted, so there is no rate
    to settle under. Everybody waits (the hint, else a doubling backoff) instead of hammering, the rate is
    not 'learned' from the wall, and full speed is back as soon as answers are."""
    clock = FakeClock()
    t0 = clock.now
    run, pacer, _ = simulate(Outage(t0 + 3.0, hint), 8.0, latency=0.01, clock=clock, concurrency=16)
    refused = sum(r for _, r in run.sent)
    assert refused <= 6 * 16  # a concurrency's worth per wait, not a storm
    assert run.held >= 1.0  # everybody waited
    assert pacer.rate >= START_RATE  # nothing was learned from the wall
    first_ok = min(t for t, r in run.sent if not r)
    assert first_ok - t0 <= 3.0 + 4.0  # answered within one (doubled) wait of the wall's end


def test_a_burst_of_refusals_with_nothing_admitted_does_not_collapse_the_rate() -> None:
    """The first 30 requests refused without a hint, then everything answered (a key whose window is
    still full, free-tier models): the rate used to halve on every refusal, down to 3 a minute."""
    clock = FakeClock()
    t0 = clock.now
    run, pacer, _ = simulate(RefuseFirst(30), 20.0, latency=0.05, clock=clock, concurrency=8)
    assert pacer.rate >= START_RATE and pacer.learner.walls == 0
    answered = [t for t, r in run.sent if not r]
    assert len(answered) >= 1000  # full speed after the last refusal (8 / 50 ms = 160/s)
    assert answered[0] - t0 <= sum(wall_backoff(n) for n in range(1, 6))


def test_learner_with_a_client_limit_starts_disengaged() -> None:
    clock = FakeClock()
    learner = RateLearner(clock=clock, engaged=False)
    assert math.isinf(learner.rate) and not learner.slow_start
    for _ in range(30):
        learner.on_send(clock.now)
        clock.now += 0.01
    refused = Ticket(clock.now - 0.05, 26, 0.0, 1.0)  # the 26th send: 25 went through before it
    cuts = [learner.on_answer(refused, limited=True) for _ in range(3)]  # refusals in a row engage it
    assert any(cuts) and 0 < learner.rate < 100


def test_429s_of_requests_sent_before_a_cut_do_not_cut_again() -> None:
    clock = FakeClock()
    learner = RateLearner(clock=clock)
    for _ in range(50):
        learner.on_send(clock.now)
        clock.now += 0.02
    early = Ticket(clock.now - 0.5, 1, 0.0, 1.0)
    assert any(learner.on_answer(early, limited=True) for _ in range(3))
    rate, cuts = learner.rate, learner.cuts
    for _ in range(10):  # the rest of that burst comes back refused
        assert not learner.on_answer(early, limited=True)
    assert (learner.rate, learner.cuts) == (rate, cuts)


def test_a_single_scattered_429_ends_the_start_without_a_cut() -> None:
    clock = FakeClock()
    learner = RateLearner(clock=clock)
    learner.on_send(clock.now)
    clock.now += 0.1
    assert not learner.on_answer(Ticket(clock.now - 0.1, 1, 0.0, 1.0), limited=True)
    assert not learner.slow_start and learner.rate == START_RATE and learner.cuts == 0


# -------------------------------------------------------------------------------------------- headers


def test_announced_budget_paces_remaining_over_time_to_reset() -> None:
    clock = FakeClock()
    budget = Announced(clock=clock)
    # 30 of 60 left, full again in 10 s: 3/s; 5 were sent after the answered request: 25 left
    assert budget.observe(AnnouncedLimit(60, 30, 10.0), used_since=5) == pytest.approx(2.5)
    assert budget.wait(clock.now, 1.0) == 0
    budget.exhaust(4.0)
    assert budget.wait(clock.now, 1.0) == pytest.approx(4.0)
    clock.now += 4.0
    assert budget.wait(clock.now, 1.0) == 0
    # the long-run pace is bounded by limit ÷ the longest reset seen (here 60 per 10 s)
    assert budget.observe(AnnouncedLimit(60, 59, 0.5), used_since=0) == pytest.approx(
        0.99 * 6.0
    )  # 60 per 10 s, and a little under


@pytest.mark.parametrize(
    ("name", "server", "cap"),
    [
        ("sliding", lambda: SlidingLog(50), 50),
        ("bucket", lambda: Bucket(50, 50), 50),
        ("fixed", lambda: FixedWindow(50), 50),
    ],
)
def test_limit_headers_on_every_answer_give_the_cap_from_the_first_second(
    name: str, server: Any, cap: int
) -> None:
    run, pacer, clock = simulate(server(), 30.0, latency=0.05, headers="all")
    start = clock.now - 30.0
    # the first round trip goes at full speed (nothing is known yet): at most what exceeds the cap of
    # one concurrency's worth is refused, once; from the first answers on, the headers pace the run
    assert sum(r for t, r in run.sent if t < start + 1.0) <= 64 - cap + 2, name
    assert run.share_429(since=start + 1.0) <= 0.01, name
    assert run.admitted_rate(start + 1, clock.now) >= 0.95 * cap, name
    assert pacer.source == "announced"


def test_a_429_saying_the_budget_is_spent_holds_everybody_until_its_reset() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    ticket = pacer.sent(1.0)
    pacer.answered(ticket, limited=True, limits=Limits(AnnouncedLimit(20, 0, 12.0), None, "openrouter"))
    assert pacer.try_take() == pytest.approx(12.0)
    paused, why = pacer.describe()[2:]
    assert paused == pytest.approx(12.0) and "requests limit resets in 12 s" in why
    clock.now += 12.0
    assert pacer.try_take() == 0


def test_after_a_spent_budget_is_waited_out_the_sends_do_not_burst_again() -> None:
    """A 60 s window of 300: slow start sends them in a third of a second; the 429s say the budget is
    spent and when it comes back. Everybody waits that long, and then sends at the rate the window
    admitted (300 / 60 s), not at slow start's (the window still holds the burst's tail)."""
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    pacer.learner.on_answer(pacer.sent(1.0), limited=False)  # (slow start's pace is not the point)
    for _ in range(299):
        clock.now += 0.001
        pacer.answered(pacer.sent(1.0), limited=False)
    clock.now += 0.001
    refused = [pacer.sent(1.0), pacer.sent(1.0)]  # two in flight; the first refusals say it all
    spent = Limits(AnnouncedLimit(300, 0, 59.7), None, "openai")
    for ticket in refused:
        pacer.refused(ticket, hint=60.0, limits=spent)
    assert pacer.try_take(1.0) >= 59.7 - 0.01  # everybody waits
    assert pacer.rate == pytest.approx(0.95 * 300 / 60.3, rel=0.02)
    clock.now += 60.0
    sent = 0
    while clock.now < refused[0].sent_at + 61.0:  # the first second after the wait
        wait = pacer.try_take(1.0)
        if wait > 0:
            clock.now += wait
            continue
        pacer.sent(1.0)
        sent += 1
    assert sent <= 6  # (was a burst at 4,096/s)


def test_pause_is_shown_with_its_reason() -> None:
    clock = FakeClock()
    pacer = Pacer(clock=clock)
    pacer.hold(30.0, "provider asked to wait 30 s")
    assert pacer.try_take() == pytest.approx(30.0)
    per_minute, source, paused, why = pacer.describe()
    assert (per_minute, source, why) == (START_RATE * 60, "learning", "provider asked to wait 30 s")
    assert paused == pytest.approx(30.0)
    clock.now += 31
    assert pacer.describe()[2:] == (0.0, "")
