"""Client-side pacing: token buckets (requests/min, tokens/min), a shared cooldown, adaptive concurrency."""

from __future__ import annotations

import math
import time

import anyio

__all__ = ["AdaptiveConcurrency", "Cooldown", "TokenBucket"]


class TokenBucket:
    """A token bucket refilled continuously at ``rate_per_minute / 60`` per second.

    ``burst`` is the bucket size in seconds of refill: small, so a provider's sliding one-second window
    never sees more than ~``burst`` × rate above the steady rate. ``acquire`` waits in FIFO order.
    ``adjust`` corrects a debit once the real cost (e.g. tokens from ``usage``) is known; the balance may
    go negative, which delays later callers.

    >>> bucket = TokenBucket(rate_per_minute=600)   # 10 per second
    >>> bucket.capacity
    1.0
    """

    def __init__(self, rate_per_minute: float, *, burst: float = 0.05, clock=time.monotonic) -> None:
        self.rate = rate_per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst)
        self._tokens = self.capacity
        self._clock = clock
        self._last = clock()
        self._lock = anyio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` can be taken (0 if now). A debit above capacity needs a full bucket."""
        self._refill()
        need = min(amount, self.capacity)
        return 0.0 if self._tokens >= need else (need - self._tokens) / self.rate

    async def acquire(self, amount: float = 1.0) -> None:
        async with self._lock:
            while (delay := self.wait_time(amount)) > 0:
                await anyio.sleep(delay)
            self._tokens -= amount

    def adjust(self, delta: float) -> None:
        """Take ``delta`` more (or give back, if negative) after the fact."""
        self._refill()
        self._tokens = min(self.capacity, self._tokens - delta)


class Cooldown:
    """A moment before which no worker sends: one 429 with Retry-After slows everybody."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self.until = 0.0

    def extend(self, seconds: float) -> None:
        self.until = max(self.until, self._clock() + seconds)

    async def wait(self) -> None:
        while (delay := self.until - self._clock()) > 0:
            await anyio.sleep(delay)


class AdaptiveConcurrency:
    """AIMD on the number of requests in flight.

    A rate-limit answer multiplies the limit by ``decrease`` (at most once per ``hold`` seconds, so one
    burst of 429s counts once). Growing back is paced in time, not in answers: one more slot per ``hold``
    seconds of success, up to the configured maximum. Providers count in windows of a second or more, so
    growing per answer (≈ once per round trip) would overshoot the cap again long before it could say so.
    """

    def __init__(
        self,
        maximum: int,
        *,
        decrease: float = 0.7,
        hold: float = 1.0,
        clock=time.monotonic,
    ) -> None:
        self.maximum = maximum
        self.limiter = anyio.CapacityLimiter(maximum)
        self._decrease = decrease
        self._hold = hold
        self._clock = clock
        self._last_cut = -math.inf
        self._last_change = -math.inf

    @property
    def limit(self) -> int:
        return int(self.limiter.total_tokens)

    def on_rate_limited(self) -> None:
        now = self._clock()
        if now - self._last_cut < self._hold:
            return
        self._last_cut = self._last_change = now
        self.limiter.total_tokens = max(1, math.floor(self.limit * self._decrease))

    def on_success(self) -> None:
        if self.limit >= self.maximum:
            return
        now = self._clock()
        if now - self._last_change >= self._hold:
            self._last_change = now
            self.limiter.total_tokens = self.limit + 1
