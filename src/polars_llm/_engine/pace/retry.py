"""What to retry, and how long to wait: exponential backoff with full jitter, honouring Retry-After."""

from __future__ import annotations

import random

from ... import exceptions as exc

__all__ = ["VALIDATION_ATTEMPTS", "backoff_delay", "is_retryable", "next_delay"]

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
        delay = max(delay, retry_after + r.uniform(0, 0.1 * max(retry_after, 0.1)))
    return delay


# A model that answered with invalid JSON usually does so again: retry such output at once, and only
# a few times, instead of paying up to max_attempts answers with backoff.
VALIDATION_ATTEMPTS = 3


def next_delay(error: BaseException, attempts: int, *, max_attempts: int, max_backoff: float) -> float | None:
    """Seconds to wait before the next attempt, or ``None`` when ``error`` is final for this row.

    >>> next_delay(exc.OutputValidationError("bad"), 1, max_attempts=8, max_backoff=60)
    0.0
    >>> next_delay(exc.OutputValidationError("bad"), 3, max_attempts=8, max_backoff=60) is None
    True
    >>> next_delay(exc.BadRequestError("no"), 1, max_attempts=8, max_backoff=60) is None
    True
    """
    if isinstance(error, exc.OutputValidationError):
        return 0.0 if attempts < min(max_attempts, VALIDATION_ATTEMPTS) else None
    if not is_retryable(error) or attempts >= max_attempts:
        return None
    retry_after = error.retry_after if isinstance(error, exc.APIError) else None
    return backoff_delay(attempts, retry_after=retry_after, max_backoff=max_backoff)
