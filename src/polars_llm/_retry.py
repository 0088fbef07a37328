"""What to retry, and how long to wait: exponential backoff with full jitter, honouring Retry-After."""

from __future__ import annotations

import random

from . import exceptions as exc

__all__ = ["backoff_delay", "is_retryable"]

BASE_DELAY = 0.5


def is_retryable(error: BaseException) -> bool:
    """Transient errors and output that failed validation are retried; nothing else is.

    >>> is_retryable(exc.ServerError("boom", status=500)), is_retryable(exc.BadRequestError("no"))
    (True, False)
    """
    return isinstance(error, exc.TransientError | exc.OutputValidationError)


def backoff_delay(
    attempt: int,
    *,
    retry_after: float | None = None,
    max_backoff: float = 60.0,
    rng: random.Random | None = None,
) -> float:
    """Delay before attempt ``attempt + 1``: full jitter over ``BASE_DELAY × 2^(attempt-1)`` capped at
    ``max_backoff``; a server's Retry-After is a floor (plus up to 10 % jitter so workers don't wake at once).

    >>> 0 <= backoff_delay(1) <= 0.5, 2.0 <= backoff_delay(3, retry_after=2.0) <= 2.2
    (True, True)
    """
    r = rng or random
    ceiling = min(max_backoff, BASE_DELAY * 2 ** max(0, attempt - 1))
    delay = r.uniform(0, ceiling)
    if retry_after is not None:
        floor = min(retry_after, max(max_backoff, retry_after))
        delay = max(delay, floor + r.uniform(0, 0.1 * max(floor, 0.1)))
    return delay
