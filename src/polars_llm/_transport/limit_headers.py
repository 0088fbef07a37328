"""What a provider says about its limits, read defensively: retry hints and rate-limit headers.

Nothing here raises on a strange value: a hint that cannot be read is ignored (``None``), so a provider's
typo never stops a run and never makes it wait for ever. An unbounded hint (``inf``, or a huge number)
is kept as the large number it is; the engine compares it with ``max_wait``.

Headers understood (names are case-insensitive):

* ``retry-after-ms`` (milliseconds), ``Retry-After`` (seconds or an HTTP date);
* OpenAI / Groq / Together style, on successes too: ``x-ratelimit-limit-requests``,
  ``x-ratelimit-remaining-requests``, ``x-ratelimit-reset-requests`` (a duration such as ``1s``,
  ``6m0s``, ``20ms``, ``1h2m3.5s``, or plain seconds) and the ``-tokens`` equivalents;
* Anthropic: ``anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}``
  (reset as an RFC 3339 time);
* OpenRouter (on its own 429s): ``X-RateLimit-Limit``, ``X-RateLimit-Remaining``, ``X-RateLimit-Reset``
  (epoch milliseconds; epoch seconds and plain durations are recognised too);
* the IETF draft ``RateLimit-Limit`` / ``RateLimit-Remaining`` / ``RateLimit-Reset`` (delta seconds).

>>> parse_duration("6m0s"), parse_duration("20ms"), parse_duration("1h2m3.5s"), parse_duration("soon")
(360.0, 0.02, 3723.5, None)
>>> parse_retry_after({"Retry-After": "soon"}) is None, parse_retry_after({"retry-after": "inf"})
(True, inf)
>>> lim = parse_limits({"x-ratelimit-limit-requests": "60", "x-ratelimit-remaining-requests": "59",
...                     "x-ratelimit-reset-requests": "1s"})
>>> lim.requests
AnnouncedLimit(limit=60.0, remaining=59.0, reset=1.0)
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

__all__ = [
    "AnnouncedLimit",
    "Limits",
    "describe_hint",
    "hint_header",
    "parse_duration",
    "parse_limits",
    "parse_number",
    "parse_retry_after",
    "wait_hint",
]

_UNITS: Final = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_DURATION_RE: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_INFINITE: Final = frozenset({"inf", "+inf", "infinity", "+infinity"})
# A reset further away than this is not a duration but a point in time (epoch seconds or milliseconds).
_EPOCH_S: Final = 1e9
_EPOCH_MS: Final = 1e12


def parse_number(value: Any) -> float | None:
    """A finite, non-negative number from a header or JSON value; ``None`` for anything else.

    >>> parse_number("12"), parse_number(3), parse_number("-1"), parse_number("nan"), parse_number(True)
    (12.0, 3.0, None, None, None)
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def parse_duration(text: Any) -> float | None:
    """Seconds from ``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s`` or a plain number of seconds.

    Unknown forms, negative and non-finite values give ``None``.
    """
    if not isinstance(text, str):
        return parse_number(text)
    value = text.strip().lower()
    if not value:
        return None
    plain = parse_number(value)
    if plain is not None:
        return plain
    pos, total = 0, 0.0
    for match in _DURATION_RE.finditer(value):
        if match.start() != pos:
            return None
        total += float(match[1]) * _UNITS[match[2]]
        pos = match.end()
    return total if pos == len(value) and pos > 0 else None


def _seconds_or_infinite(text: str) -> float | None:
    value = text.strip().lower()
    if value in _INFINITE:
        return math.inf
    try:
        number = float(value)
    except ValueError:
        return None
    if math.isnan(number) or number < 0:
        return None
    return number


def _http_date(text: str, now: float) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    try:
        return max(0.0, parsed.timestamp() - now)
    except (OverflowError, OSError, ValueError):
        return None


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    out = {}
    for name, value in headers.items():
        if isinstance(name, str) and isinstance(value, str):
            out[name.lower()] = value
    return out


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the provider asked us to wait, from ``retry-after-ms`` or ``Retry-After``.

    ``Retry-After`` may be seconds or an HTTP date (a date in the past means 0). ``inf`` stays ``inf``
    (the engine stops rather than wait for ever); negative, ``nan`` and unreadable values are ignored.

    >>> parse_retry_after({"retry-after": "2"}), parse_retry_after({"retry-after-ms": "1500"})
    (2.0, 1.5)
    >>> bad, ok = {"retry-after": "-3"}, {"retry-after-ms": "x", "Retry-After": "4"}
    >>> parse_retry_after(bad), parse_retry_after(ok)
    (None, 4.0)
    """
    lower = _lower(headers)
    ms = lower.get("retry-after-ms")
    if ms:
        seconds = _seconds_or_infinite(ms)
        if seconds is not None:
            return seconds / 1000.0
    value = lower.get("retry-after")
    if not value:
        return None
    seconds = _seconds_or_infinite(value)
    if seconds is not None:
        return seconds
    return _http_date(value, time.time() if now is None else now)


def hint_header(headers: Mapping[str, str]) -> str | None:
    """The retry-hint header as the provider sent it, for quoting in messages (``"Retry-After: 30"``)."""
    for name, value in headers.items():
        if isinstance(name, str) and name.lower() in ("retry-after-ms", "retry-after"):
            shown = {"retry-after-ms": "retry-after-ms", "retry-after": "Retry-After"}[name.lower()]
            return f"{shown}: {str(value)[:80]}"
    return None


def describe_hint(seconds: float) -> str:
    """A wait in words: ``"30 s"``, ``"15 min"``, ``"3.2 h"``, ``"ever (inf)"``.

    >>> describe_hint(30), describe_hint(900), describe_hint(11_520), describe_hint(float("inf"))
    ('30 s', '15 min', '3.2 h', 'ever (inf)')
    """
    if math.isinf(seconds):
        return "ever (inf)"
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:,.0f} days"


@dataclass(frozen=True, slots=True)
class AnnouncedLimit:
    """One rate limit as a response's headers announce it: ``limit`` (may be unknown), ``remaining`` now,
    and ``reset`` — seconds until it is back to ``limit`` (``None`` if not said). Not the spending
    budget of ``max_cost`` (``_cost.Budget``)."""

    limit: float | None
    remaining: float | None
    reset: float | None

    @property
    def usable(self) -> bool:
        """Enough to pace from: what is left and when it comes back."""
        return self.remaining is not None and self.reset is not None


@dataclass(frozen=True, slots=True)
class Limits:
    """The request and token limits a response announced, and which convention it used."""

    requests: AnnouncedLimit | None
    tokens: AnnouncedLimit | None
    source: str

    def describe(self) -> str:
        parts = []
        for name, announced in (("requests", self.requests), ("tokens", self.tokens)):
            if announced is not None and announced.remaining is not None:
                text = f"{announced.remaining:,.0f}"
                if announced.limit is not None:
                    text += f"/{announced.limit:,.0f}"
                text += f" {name}"
                if announced.reset is not None:
                    text += f" (reset in {describe_hint(announced.reset)})"
                parts.append(text)
        return f"{self.source}: " + ", ".join(parts) if parts else self.source


def _reset_point(value: str | None, now: float) -> float | None:
    """A reset given as epoch milliseconds, epoch seconds, or a duration: seconds from now."""
    if value is None:
        return None
    number = parse_number(value)
    if number is None:
        return parse_duration(value)
    if number >= _EPOCH_MS:
        return max(0.0, number / 1000.0 - now)
    if number >= _EPOCH_S:
        return max(0.0, number - now)
    return number


def _rfc3339(value: str | None, now: float) -> float | None:
    if value is None:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return _reset_point(value, now)
    if moment.tzinfo is None:
        return None
    return max(0.0, moment.timestamp() - now)


def _limit(
    lower: Mapping[str, str], limit: str, remaining: str, reset: str, read_reset: Callable[[str | None], Any]
) -> AnnouncedLimit | None:
    names = (limit, remaining, reset)
    if not any(name in lower for name in names):
        return None
    announced = AnnouncedLimit(
        parse_number(lower.get(limit)), parse_number(lower.get(remaining)), read_reset(lower.get(reset))
    )
    if announced.limit is None and announced.remaining is None:
        return None
    return announced


def _smaller(a: AnnouncedLimit | None, b: AnnouncedLimit | None) -> AnnouncedLimit | None:
    """Of two announced limits, the tighter one (the lower remaining ÷ reset)."""
    if a is None or not a.usable:
        return b if b is not None else a
    if b is None or not b.usable:
        return a
    rate_a = a.remaining / a.reset if a.reset else math.inf  # type: ignore[operator]
    rate_b = b.remaining / b.reset if b.reset else math.inf  # type: ignore[operator]
    return a if rate_a <= rate_b else b


def parse_limits(headers: Mapping[str, str], now: float | None = None) -> Limits | None:
    """The rate limits announced in ``headers``, or ``None`` when there are none (or unreadable).

    >>> parse_limits({"X-RateLimit-Limit": "20", "X-RateLimit-Remaining": "0",
    ...               "X-RateLimit-Reset": str(int((time.time() + 30) * 1000))}).requests.reset > 25
    True
    >>> parse_limits({"content-type": "application/json"}) is None
    True
    """
    lower = _lower(headers)
    if not any("ratelimit" in name for name in lower):
        return None
    now = time.time() if now is None else now
    duration: Callable[[str | None], float | None] = parse_duration
    point: Callable[[str | None], float | None] = lambda v: _reset_point(v, now)  # noqa: E731
    rfc: Callable[[str | None], float | None] = lambda v: _rfc3339(v, now)  # noqa: E731
    if any(name.startswith("x-ratelimit-") and name.endswith(("-requests", "-tokens")) for name in lower):
        p = "x-ratelimit-"
        requests = _limit(
            lower, p + "limit-requests", p + "remaining-requests", p + "reset-requests", duration
        )
        tokens = _limit(lower, p + "limit-tokens", p + "remaining-tokens", p + "reset-tokens", duration)
        source = "openai"
    elif any(name.startswith("anthropic-ratelimit-") for name in lower):
        p = "anthropic-ratelimit-"
        requests = _limit(lower, p + "requests-limit", p + "requests-remaining", p + "requests-reset", rfc)
        tokens = _limit(lower, p + "tokens-limit", p + "tokens-remaining", p + "tokens-reset", rfc)
        for kind in ("input-tokens", "output-tokens"):
            tokens = _smaller(
                tokens, _limit(lower, f"{p}{kind}-limit", f"{p}{kind}-remaining", f"{p}{kind}-reset", rfc)
            )
        source = "anthropic"
    elif "x-ratelimit-remaining" in lower or "x-ratelimit-limit" in lower:
        requests = _limit(lower, "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", point)
        tokens, source = None, "openrouter"
    elif "ratelimit-remaining" in lower or "ratelimit-limit" in lower:
        requests = _limit(lower, "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", duration)
        tokens, source = None, "ietf"
    else:
        return None
    if requests is None and tokens is None:
        return None
    return Limits(requests, tokens, source)


def wait_hint(retry_after: float | None, status: int | None, limits: Limits | None) -> float | None:
    """How long a refusal asked to wait: its Retry-After, else the reset of a limit it says is spent.

    >>> wait_hint(None, 429, Limits(AnnouncedLimit(20, 0, 15.0), None, "openrouter"))
    15.0
    >>> wait_hint(2.0, 429, None), wait_hint(None, 500, Limits(AnnouncedLimit(20, 0, 15.0), None, "x"))
    (2.0, None)
    """
    if retry_after is not None:
        return retry_after
    if limits is None or status not in (429, 402):
        return None
    resets = [
        b.reset
        for b in (limits.requests, limits.tokens)
        if b is not None and b.remaining is not None and b.remaining < 1 and b.reset is not None
    ]
    return max(resets) if resets else None
