"""Pure unit tests: pacing, retry policy, error mapping, config and secrets (no network)."""

from __future__ import annotations

import random

import pytest

from polars_llm import exceptions as exc
from polars_llm._client import error_for_status, parse_completion, parse_retry_after
from polars_llm._config import MapConfig, Secret, resolve_config
from polars_llm._ratelimit import AdaptiveConcurrency, Cooldown, TokenBucket
from polars_llm._retry import backoff_delay, is_retryable


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_continuously() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_minute=600, clock=clock)  # 10/s, burst of 1
    assert bucket.wait_time(1) == 0
    bucket._tokens -= 1
    assert bucket.wait_time(1) == pytest.approx(0.1)
    clock.now += 0.05
    assert bucket.wait_time(1) == pytest.approx(0.05)
    clock.now += 10  # never fills past capacity
    assert bucket.wait_time(1) == 0 and bucket._tokens == bucket.capacity


def test_token_bucket_adjust_creates_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_minute=60_000, burst=1.0, clock=clock)  # 1000 tokens/s
    bucket.adjust(bucket.capacity + 500)  # the real usage was far above the estimate
    assert bucket.wait_time(1) == pytest.approx(0.501)


def test_steady_rate_never_exceeds_limit_in_any_window() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_minute=0.95 * 50 * 60, clock=clock)  # 95 % of 50/s
    sent: list[float] = []
    while clock.now < 110:
        wait = bucket.wait_time(1)
        clock.now += wait
        bucket._tokens -= 1
        sent.append(clock.now)
    worst = max(sum(1 for t in sent if s <= t < s + 1.0) for s in sent)
    assert worst <= 50


def test_cooldown_extends_only_forward() -> None:
    clock = FakeClock()
    cd = Cooldown(clock=clock)
    cd.extend(5)
    cd.extend(1)
    assert cd.until == 105


def test_adaptive_concurrency_cuts_once_per_hold_and_grows_back_in_time() -> None:
    clock = FakeClock()
    ac = AdaptiveConcurrency(10, clock=clock)
    ac.on_rate_limited()
    ac.on_rate_limited()  # same burst: counted once
    assert ac.limit == 7
    clock.now += 2
    ac.on_rate_limited()
    assert ac.limit == 4
    for _ in range(1000):  # a flood of fast answers in the same second does not grow it
        ac.on_success()
    assert ac.limit == 4
    clock.now += 1
    ac.on_success()
    ac.on_success()
    assert ac.limit == 5  # one slot per second of success
    for _ in range(20):
        clock.now += 1
        ac.on_success()
    assert ac.limit == 10  # never above the configured maximum


def test_backoff_full_jitter_and_retry_after_floor() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(5, rng=rng) for _ in range(500)]
    assert min(delays) >= 0 and max(delays) <= 8.0  # 0.5 * 2**4
    assert max(delays) > 4.0 and min(delays) < 1.0  # jitter spans the range
    assert all(backoff_delay(1, retry_after=3, rng=rng) >= 3 for _ in range(100))
    assert all(backoff_delay(20, max_backoff=10, rng=rng) <= 10 for _ in range(100))


def test_what_is_retried() -> None:
    assert is_retryable(exc.RateLimitError("x"))
    assert is_retryable(exc.APITimeoutError("x"))
    assert is_retryable(exc.OutputValidationError("x"))
    assert not is_retryable(exc.BadRequestError("x"))
    assert not is_retryable(exc.AuthenticationError("x"))
    assert not is_retryable(ValueError("x"))


def test_retry_after_headers() -> None:
    assert parse_retry_after({"Retry-After": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


@pytest.mark.parametrize(
    ("status", "headers", "cls"),
    [
        (429, {"retry-after": "2"}, exc.RateLimitError),
        (500, {}, exc.ServerError),
        (503, {}, exc.ServerError),
        (400, {}, exc.BadRequestError),
        (422, {}, exc.BadRequestError),
        (401, {}, exc.AuthenticationError),
        (403, {}, exc.PermissionDeniedError),
        (402, {}, exc.InsufficientCreditsError),
        (402, {"retry-after": "4"}, exc.RateLimitError),
        (404, {}, exc.NotFoundError),
        (408, {}, exc.APITimeoutError),
    ],
)
def test_status_mapping(status: int, headers: dict[str, str], cls: type[exc.APIError]) -> None:
    err = error_for_status(status, headers, '{"error": {"message": "provider says no"}}')
    assert type(err) is cls
    assert err.status == status and "provider says no" in str(err)
    if "retry-after" in headers:
        assert err.retry_after == float(headers["retry-after"])


def test_moderation_403_is_a_row_error() -> None:
    err = error_for_status(403, {}, '{"error": {"message": "Your input was flagged by moderation"}}')
    assert isinstance(err, exc.ContentFilterError)


def test_error_inside_200_body_is_an_error() -> None:
    with pytest.raises(exc.ServerError):
        parse_completion({"error": {"code": 502, "message": "upstream died"}})
    with pytest.raises(exc.RateLimitError):
        parse_completion({"error": {"code": 429, "message": "slow"}})
    with pytest.raises(exc.MalformedResponseError):
        parse_completion({"choices": []})
    done = parse_completion(
        {
            "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "cost": 0.002},
        }
    )
    assert (done.text, done.tokens_in, done.tokens_out, done.cost) == ("hi", 3, 1, 0.002)


def test_secret_never_shows() -> None:
    key = "sk-or-VERY-SECRET-123"
    cfg = resolve_config(model="m", api_key=key, cache=None)
    assert key not in repr(cfg) and key not in str(cfg)
    assert key not in repr(Secret(key))
    assert cfg.api_key is not None and cfg.api_key.get() == key


def test_config_is_frozen() -> None:
    cfg = MapConfig(model="m", api_key=Secret("k"))
    with pytest.raises(AttributeError):
        cfg.concurrency = 3  # type: ignore[misc]


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(exc.ConfigError, match="concurency"):
        resolve_config(model="m", api_key="k", concurency=3)


def test_api_error_facts_survive_pickling() -> None:
    import pickle

    err = exc.RateLimitError("slow", status=429, headers={"retry-after": "1"}, retry_after=1.0, attempts=3)
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), copy.status, copy.retry_after, copy.attempts) == (exc.RateLimitError, 429, 1.0, 3)
