"""Client-side limits the user sets: token buckets for ``rpm_limit`` and ``tpm_limit``.

What the provider admits is learned or read from its headers in :mod:`polars_llm._engine.pace.pacer`.
"""

from __future__ import annotations

import time

import anyio

__all__ = ["TokenBucket"]


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
