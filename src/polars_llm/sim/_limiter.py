"""Rate limits of the simulator: the request cap in three shapes, the token cap, and their headers.

Request cap (``rate_limit`` per ``window`` seconds), by ``limit_shape``:

* ``"sliding"`` — a true sliding log: at most ``rate_limit`` admitted in any ``window`` seconds;
  ``reset`` is when the oldest counted request leaves (one more fits then);
* ``"fixed"`` — fixed windows aligned on multiples of ``window``; ``reset`` is the window's end;
* ``"bucket"`` — a token bucket holding ``bucket_burst`` (default ``rate_limit``), refilled at
  ``rate_limit / window`` per second; ``reset`` is when it is full again (OpenAI's meaning).

Token cap: ``tpm_limit`` tokens per sliding ``tpm_window`` seconds (prompt tokens on admission,
completion tokens on answer). Rejected requests never count.

Headers (``limit_headers``: ``"none"``, ``"429"`` — on refusals only, the default — or ``"all"``, also on
successes) in ``limit_header_style``: ``"openai"`` (``x-ratelimit-*-requests`` / ``-tokens``, resets as
durations like ``1.5s``), ``"openrouter"`` (``X-RateLimit-*``, reset in epoch milliseconds),
``"anthropic"`` (``anthropic-ratelimit-*``, reset as RFC 3339) or ``"ietf"`` (``RateLimit-*``, seconds).
Refusals also carry ``Retry-After`` (whole seconds, ≥ 1) and ``retry-after-ms``, unless
``refusal_retry_after=False`` (like OpenRouter's platform 429s, which may name only their reset).
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections import deque
from typing import Final

from aiohttp import web

from ._options import SimConfig
from ._wire import error_response, retry_headers

__all__ = ["Limiter", "go_duration"]

_HOUR: Final = 3600.0


def go_duration(seconds: float) -> str:
    """A duration as OpenAI writes it: ``20ms``, ``1.5s``, ``6m0s``, ``1h2m3s``.

    >>> go_duration(0.02), go_duration(1.5), go_duration(360), go_duration(3723)
    ('20ms', '1.5s', '6m0s', '1h2m3s')
    """
    seconds = max(0.0, seconds)
    if seconds < 1.0:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60.0:
        return f"{round(seconds, 3):g}s"
    hours, rest = divmod(seconds, _HOUR)
    minutes, secs = divmod(rest, 60.0)
    text = f"{int(minutes)}m{round(secs, 3):g}s"
    return f"{int(hours)}h{text}" if hours else text


def _headers(style: str, kind: str, limit: float, remaining: float, reset: float) -> dict[str, str]:
    remaining = max(0, math.floor(remaining))
    if style == "openai":
        return {
            f"x-ratelimit-limit-{kind}": str(int(limit)),
            f"x-ratelimit-remaining-{kind}": str(remaining),
            f"x-ratelimit-reset-{kind}": go_duration(reset),
        }
    if kind != "requests" and style in ("openrouter", "ietf"):
        return {}
    if style == "openrouter":
        return {
            "X-RateLimit-Limit": str(int(limit)),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(int((time.time() + reset) * 1000)),
        }
    if style == "anthropic":
        at = _dt.datetime.fromtimestamp(time.time() + reset, tz=_dt.UTC).isoformat(timespec="milliseconds")
        return {
            f"anthropic-ratelimit-{kind}-limit": str(int(limit)),
            f"anthropic-ratelimit-{kind}-remaining": str(remaining),
            f"anthropic-ratelimit-{kind}-reset": at.replace("+00:00", "Z"),
        }
    return {  # ietf
        "RateLimit-Limit": str(int(limit)),
        "RateLimit-Remaining": str(remaining),
        "RateLimit-Reset": str(math.ceil(reset)),
    }


class Limiter:
    """Admission state of one simulated server (call with the engine's lock held)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._log: deque[float] = deque()  # sliding: admission times
        self._fixed_index = -1
        self._fixed_count = 0
        self._tokens = -1.0  # bucket level (-1: not started, i.e. full)
        self._bucket_at = 0.0
        self._tok: deque[tuple[float, int]] = deque()
        self._tok_sum = 0

    # ----------------------------------------------------------------------------------- request cap

    def _requests(self, cfg: SimConfig, now: float, take: bool) -> tuple[bool, float, float, float]:
        """``(admitted, limit, remaining after, reset)`` of the request cap (admits when ``take``)."""
        limit = cfg.rate_limit
        assert limit is not None
        if cfg.limit_shape == "fixed":
            index = math.floor(now / cfg.window)
            if index != self._fixed_index:
                self._fixed_index, self._fixed_count = index, 0
            reset = (index + 1) * cfg.window - now
            ok = self._fixed_count < limit
            if ok and take:
                self._fixed_count += 1
            return ok, limit, limit - self._fixed_count, reset
        if cfg.limit_shape == "bucket":
            capacity = float(cfg.bucket_burst or limit)
            rate = limit / cfg.window
            if self._tokens < 0:
                self._tokens = capacity
            else:
                self._tokens = min(capacity, self._tokens + (now - self._bucket_at) * rate)
            self._bucket_at = now
            ok = self._tokens >= 1.0
            if ok and take:
                self._tokens -= 1.0
            reset = (capacity - self._tokens) / rate if ok else (1.0 - self._tokens) / rate
            return ok, capacity, self._tokens, reset
        log = self._log
        cutoff = now - cfg.window
        while log and log[0] <= cutoff:
            log.popleft()
        if len(log) >= limit:
            return False, limit, 0, log[len(log) - limit] + cfg.window - now
        if take:
            log.append(now)
        return True, limit, limit - len(log), (log[0] + cfg.window - now) if log else 0.0

    # ------------------------------------------------------------------------------------- token cap

    def _trim_tokens(self, cfg: SimConfig, now: float) -> None:
        cutoff = now - cfg.tpm_window
        tq = self._tok
        while tq and tq[0][0] <= cutoff:
            self._tok_sum -= tq.popleft()[1]

    def add_tokens(self, cfg: SimConfig, tokens: int, now: float) -> None:
        """Completion tokens of an answer count toward the token window too."""
        if cfg.tpm_limit is not None:
            self._tok.append((now, tokens))
            self._tok_sum += tokens

    # --------------------------------------------------------------------------------------- admission

    def admit(
        self, cfg: SimConfig, tokens: int, now: float
    ) -> tuple[web.Response | None, dict[str, str], str]:
        """``(refusal, headers for the answer, fault)``: a 429 (or 413) response and the fault counted
        (``rate_limit``, ``tpm_limit``), or ``None`` and the limit headers a success carries
        (``limit_headers="all"``)."""
        style = cfg.limit_header_style
        announce = cfg.limit_headers != "none"
        headers: dict[str, str] = {}
        if cfg.rate_limit is not None:
            ok, limit, remaining, reset = self._requests(cfg, now, take=False)
            if not ok:
                refusal = retry_headers(reset) if cfg.refusal_retry_after else {}
                if announce:
                    refusal.update(_headers(style, "requests", limit, 0, reset))
                what = f"{cfg.rate_limit} requests per {cfg.window:g}s"
                return error_response(429, f"Rate limit exceeded: {what}", refusal), {}, "rate_limit"
        elif self._log or self._fixed_count or self._tokens >= 0:
            self.reset_requests()
        if cfg.tpm_limit is not None:
            if tokens > cfg.tpm_limit:
                text = f"Request too large: {tokens} tokens > tpm_limit {cfg.tpm_limit}"
                return error_response(413, text), {}, ""
            self._trim_tokens(cfg, now)
            if self._tok_sum + tokens > cfg.tpm_limit:
                excess = self._tok_sum + tokens - cfg.tpm_limit
                freed, wait = 0, cfg.tpm_window
                for stamp, used in self._tok:
                    freed += used
                    if freed >= excess:
                        wait = stamp + cfg.tpm_window - now
                        break
                refusal = retry_headers(wait) if cfg.refusal_retry_after else {}
                if announce:
                    left = cfg.tpm_limit - self._tok_sum
                    refusal.update(_headers(style, "tokens", cfg.tpm_limit, left, wait))
                what = f"{cfg.tpm_limit} tokens per {cfg.tpm_window:g}s"
                return error_response(429, f"Rate limit exceeded: {what}", refusal), {}, "tpm_limit"
        elif self._tok:
            self._tok.clear()
            self._tok_sum = 0
        if cfg.rate_limit is not None:
            _, limit, remaining, reset = self._requests(cfg, now, take=True)
            if cfg.limit_headers == "all":
                headers.update(_headers(style, "requests", limit, remaining, reset))
        if cfg.tpm_limit is not None:
            self._tok.append((now, tokens))
            self._tok_sum += tokens
            if cfg.limit_headers == "all":
                oldest = self._tok[0][0] + cfg.tpm_window - now
                left = cfg.tpm_limit - self._tok_sum
                headers.update(_headers(style, "tokens", cfg.tpm_limit, left, oldest))
        return None, headers, ""

    def reset_requests(self) -> None:
        self._log.clear()
        self._fixed_index, self._fixed_count = -1, 0
        self._tokens = -1.0
