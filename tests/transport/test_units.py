"""Pure unit tests: pacing, retry policy, error mapping, config and secrets (no network)."""

from __future__ import annotations

import json
import math
import random
from datetime import UTC, datetime

import pytest

from polars_llm import exceptions as exc
from polars_llm._config import MapConfig, Secret, resolve_config
from polars_llm._engine.pace.buckets import TokenBucket
from polars_llm._transport import error_for_status, parse_completion, parse_retry_after
from polars_llm._transport.limit_headers import AnnouncedLimit, parse_duration, parse_limits
from polars_llm._transport.retry import backoff_delay, is_retryable


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
    ("headers", "seconds"),
    [
        ({"Retry-After": "soon"}, None),  # nonsense is ignored, never fatal
        ({"Retry-After": ""}, None),
        ({"Retry-After": "-4"}, None),
        ({"Retry-After": "nan"}, None),
        ({"Retry-After": "1e400"}, math.inf),  # too large to be a float: unbounded
        ({"Retry-After": "inf"}, math.inf),  # unbounded: the engine compares it with max_wait
        ({"Retry-After": "100000000"}, 100_000_000.0),
        ({"Retry-After": "2.5"}, 2.5),
        ({"retry-after-ms": "soon", "Retry-After": "7"}, 7.0),
        ({"retry-after-ms": "20"}, 0.02),
        ({"Retry-After": "Thu, 01 Jan 2099 00:00:00 GMT"}, "future"),
        ({"Retry-After": "Mon, 99 Foo 2015 07:28:00 GMT"}, None),
    ],
)
def test_retry_hints_are_read_defensively(headers: dict[str, str], seconds: object) -> None:
    value = parse_retry_after(headers)
    if seconds == "future":
        assert value is not None and value > 1e9
    else:
        assert value == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        *[("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("2m", 120.0)],
        *[("", None), ("soon", None), ("5x", None), ("-1s", None), ("1s2", None), ("inf", None)],
    ],
)
def test_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_limit_headers_of_every_convention() -> None:
    now = 1_800_000_000.0
    openai = parse_limits(
        {
            "x-ratelimit-limit-requests": "500",
            "x-ratelimit-remaining-requests": "499",
            "x-ratelimit-reset-requests": "120ms",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "29000",
            "x-ratelimit-reset-tokens": "2s",
        },
        now,
    )
    assert openai is not None and openai.source == "openai"
    assert openai.requests == AnnouncedLimit(500, 499, 0.12) and openai.tokens == AnnouncedLimit(
        30000, 29000, 2.0
    )
    anthropic = parse_limits(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "10",
            "anthropic-ratelimit-requests-reset": "2027-01-15T08:00:30Z",
        },
        datetime(2027, 1, 15, 8, 0, tzinfo=UTC).timestamp(),
    )
    assert anthropic is not None and anthropic.requests == AnnouncedLimit(50, 10, 30.0)
    router = parse_limits(
        {
            "X-RateLimit-Limit": "20",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": str(int(now * 1000) + 15_000),
        },
        now,
    )
    assert (
        router is not None
        and router.source == "openrouter"
        and router.requests == AnnouncedLimit(20, 0, 15.0)
    )
    ietf = parse_limits({"RateLimit-Limit": "100", "RateLimit-Remaining": "3", "RateLimit-Reset": "7"}, now)
    assert ietf is not None and ietf.requests == AnnouncedLimit(100, 3, 7.0)
    # unreadable values are dropped, not raised
    odd = parse_limits({"x-ratelimit-remaining-requests": "lots", "x-ratelimit-reset-requests": "soon"}, now)
    assert odd is None
    assert parse_limits({"content-type": "text/html"}, now) is None


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


def test_odd_answers_parse_to_a_clear_completion() -> None:
    def answer(message: object, usage: object = None, finish: object = "stop") -> dict[str, object]:
        return {"choices": [{"message": message, "finish_reason": finish}], "usage": usage}

    parts = parse_completion(
        answer({"content": [{"type": "text", "text": "he"}, {"type": "text", "text": "llo"}]})
    )
    assert (parts.text, parts.unusable) == ("hello", None)
    number = parse_completion(answer({"content": 42}))
    assert number.text is None and number.unusable is not None and "int 42" in number.unusable
    image = parse_completion(answer({"content": [{"type": "image_url", "image_url": {"url": "x"}}]}))
    assert image.text is None and "image_url" in (image.unusable or "")
    refusal = parse_completion(answer({"content": None, "refusal": "I can't"}))
    assert refusal.refusal == "I can't"
    strings = parse_completion(
        answer({"content": "x"}, {"prompt_tokens": "12", "completion_tokens": "3", "cost": "0.5"})
    )
    assert (strings.tokens_in, strings.tokens_out, strings.cost) == (12, 3, 0.5)
    negative = parse_completion(
        answer({"content": "x"}, {"prompt_tokens": -5, "completion_tokens": "nan", "cost": -1})
    )
    assert (negative.tokens_in, negative.tokens_out, negative.cost) == (None, None, None)
    assert parse_completion(answer({"content": "x"}, finish=7)).finish_reason is None
    for broken in ({"choices": None}, {"choices": [{"message": None}]}, {"choices": ["text"]}, [1, 2]):
        with pytest.raises(exc.MalformedResponseError):
            parse_completion(broken)
    with pytest.raises(exc.RateLimitError):
        parse_completion({"error": {"code": "429", "message": "slow down"}})  # a code as a string


def test_402_messages_quote_the_provider() -> None:
    meta = {"limit_source": "openrouter_credits", "reason": "weight_exceeds_budget"}
    body = json.dumps({"error": {"code": 402, "message": "Not enough", "metadata": meta}})
    err = error_for_status(402, {}, body)
    assert isinstance(err, exc.InsufficientCreditsError)
    assert "weight_exceeds_budget" in str(err) and "lower max_tokens" in str(err)
    waits = error_for_status(
        402, {"Retry-After": "3"}, body.replace("openrouter_credits", "openrouter_in_flight_budget")
    )
    assert isinstance(waits, exc.RateLimitError) and waits.retry_after == 3.0


def test_html_error_pages_are_shortened_to_their_title() -> None:
    page = (
        "<html><head><title>502 Bad Gateway</title></head><body><h1>nginx</h1>"
        + "x" * 5000
        + "</body></html>"
    )
    err = error_for_status(502, {}, page)
    assert isinstance(err, exc.ServerError) and err.message == "502 Bad Gateway"
