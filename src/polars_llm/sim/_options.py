"""Options of the simulated server: one frozen, validated dataclass (changed live with ``replace``).

>>> cfg = SimConfig(latency=0.05, rate_limit=10)
>>> cfg.latency, cfg.rate_limit, cfg.window
(0.05, 10, 1.0)
>>> SimConfig(error_rate=2.0)
Traceback (most recent call last):
...
polars_llm.exceptions.ConfigError: error_rate must be a probability between 0 and 1, got 2.0
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Final

from .._config import checks as ck
from ..exceptions import ConfigError

__all__ = ["BATCH_OUTCOMES", "FAULT_RATES", "LIVE_FIXED", "SimConfig"]

FAULT_RATES: Final = (
    "reset_rate",
    "stall_rate",
    "error_rate",
    "malformed_rate",
    "truncated_rate",
    "error_in_200_rate",
    "empty_choices_rate",
)
"""The probabilistic faults, in the order their slices of ``[0, 1)`` are laid out."""

LIVE_FIXED: Final = frozenset({"host", "port", "backlog"})
BATCH_OUTCOMES: Final = ("completed", "expired", "failed")
"""How a batch ends once ``batch_seconds`` have passed."""
"""Options that cannot change while the server runs."""


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Every option of the simulator; validated on construction (:class:`ConfigError` otherwise).

    Times are in seconds, probabilities in ``[0, 1]`` (the fault rates together at most 1), prices in
    USD per token. The ``batch_*`` options drive the Batch API (see :mod:`polars_llm.sim._batches`).
    """

    host: str = "127.0.0.1"
    port: int = 0
    backlog: int = 2048
    latency: float = 0.0
    jitter: float = 0.0
    rate_limit: int | None = None
    window: float = 1.0
    limit_shape: str = "sliding"
    bucket_burst: int | None = None
    limit_headers: str = "429"
    limit_header_style: str = "openai"
    refusal_retry_after: bool = True
    tpm_limit: int | None = None
    tpm_window: float = 60.0
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    error_retry_after: float | None = 1.0
    malformed_rate: float = 0.0
    truncated_rate: float = 0.0
    truncate_close: bool = False
    error_in_200_rate: float = 0.0
    empty_choices_rate: float = 0.0
    stall_rate: float = 0.0
    stall_seconds: float = 30.0
    reset_rate: float = 0.0
    burst_429: bool = False
    burst_seconds: float = 5.0
    burst_retry_after: float = 1.0
    burst_requests: int = 0
    fail_mode: int | None = None
    seed: int = 0
    api_key: str | None = field(default=None, repr=False)
    prompt_price: float = 1e-7
    completion_price: float = 4e-7
    report_cost: bool = True
    reasoning_ratio: float = 0.0
    cached_ratio: float = 0.0
    max_output: int | None = 4096
    honor_max_tokens: bool = True
    models: tuple[str, ...] = ("sim/echo",)
    shutdown_timeout: float = 0.25
    batch_api: bool = True
    batch_seconds: float | None = 0.0
    batch_outcome: str = "completed"
    batch_done_share: float = 0.5
    batch_price_factor: float = 0.5
    batch_max_requests: int = 50_000
    batch_max_bytes: int = 200_000_000
    embedding_dimensions: int = 64
    request_log: int = 1000

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"host must be a non-empty string, got {self.host!r}")
        _check_int("port", self.port, 0, 65535)
        _check_int("backlog", self.backlog, 1, 1_000_000)
        for name in ("latency", "jitter", "stall_seconds", "burst_seconds", "shutdown_timeout"):
            _check_seconds(name, getattr(self, name), allow_zero=True)
        for name in ("window", "tpm_window"):
            _check_seconds(name, getattr(self, name), allow_zero=False)
        _check_seconds("burst_retry_after", self.burst_retry_after, allow_zero=True)
        _check_int("burst_requests", self.burst_requests, 0, 10**12)
        if self.error_retry_after is not None:
            _check_seconds("error_retry_after", self.error_retry_after, allow_zero=False)
        if self.rate_limit is not None:
            _check_int("rate_limit", self.rate_limit, 1, 10**12)
        if self.bucket_burst is not None:
            _check_int("bucket_burst", self.bucket_burst, 1, 10**12)
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.tpm_limit is not None:
            _check_int("tpm_limit", self.tpm_limit, 1, 10**15)
        total = 0.0
        for name in FAULT_RATES:
            value = getattr(self, name)
            if not (ck.is_number(value) and 0.0 <= value <= 1.0):
                raise ConfigError(f"{name} must be a probability between 0 and 1, got {value!r}")
            total += value
        if total > 1.0 + 1e-9:
            raise ConfigError(f"the fault rates add up to {total:g}; they must add up to at most 1")
        if not isinstance(self.error_statuses, tuple) or not self.error_statuses:
            raise ConfigError("error_statuses must be a non-empty tuple of HTTP status codes")
        for status in self.error_statuses:
            _check_int("error_statuses item", status, 400, 599)
        if self.fail_mode not in (None, 401, 402, 403):
            raise ConfigError(f"fail_mode must be None, 401, 402 or 403, got {self.fail_mode!r}")
        _check_int("seed", self.seed, -(2**63), 2**63)
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key):
            raise ConfigError("api_key must be a non-empty string or None")
        for name in ("prompt_price", "completion_price"):
            value = getattr(self, name)
            if not (ck.is_number(value) and value >= 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a non-negative number (USD per token), got {value!r}")
        for name in ("reasoning_ratio", "cached_ratio"):
            value = getattr(self, name)
            if not (ck.is_number(value) and 0.0 <= value <= 1.0):
                raise ConfigError(f"{name} must be a fraction between 0 and 1, got {value!r}")
        if self.max_output is not None:
            _check_int("max_output", self.max_output, 1, 10**9)
        self._check_batch()
        for name in (
            "truncate_close",
            "burst_429",
            "honor_max_tokens",
            "refusal_retry_after",
            "report_cost",
            "batch_api",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        _check_int("embedding_dimensions", self.embedding_dimensions, 1, 8192)
        _check_int("request_log", self.request_log, 0, 10_000_000)
        if not isinstance(self.models, tuple) or not all(isinstance(m, str) and m for m in self.models):
            raise ConfigError("models must be a tuple of non-empty model names")

    def _check_batch(self) -> None:
        if self.batch_seconds is not None:
            _check_seconds("batch_seconds", self.batch_seconds, allow_zero=True)
        ck.choice(*BATCH_OUTCOMES)("batch_outcome", self.batch_outcome)
        for name in ("batch_done_share", "batch_price_factor"):
            value = getattr(self, name)
            if not (ck.is_number(value) and 0.0 <= value <= 1.0):
                raise ConfigError(f"{name} must be a number between 0 and 1, got {value!r}")
        _check_int("batch_max_requests", self.batch_max_requests, 1, 10**9)
        _check_int("batch_max_bytes", self.batch_max_bytes, 1, 10**13)

    def replace(self, **changes: Any) -> SimConfig:
        """A copy with ``changes`` applied and validated; unknown names raise :class:`ConfigError`."""
        unknown = set(changes) - _FIELD_NAMES
        if unknown:
            raise ConfigError(f"unknown simulator option(s): {', '.join(sorted(unknown))}")
        for name in ("error_statuses", "models"):
            if isinstance(changes.get(name), list):
                changes[name] = tuple(changes[name])
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able options; the API key is masked."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if out["api_key"] is not None:
            out["api_key"] = "********"
        return out


_CHOICES: Final = {
    "limit_shape": ("sliding", "fixed", "bucket"),
    "limit_headers": ("none", "429", "all"),
    "limit_header_style": ("openai", "openrouter", "anthropic", "ietf"),
}
_FIELD_NAMES: Final = frozenset(f.name for f in dataclasses.fields(SimConfig))


def _check_int(name: str, value: object, low: int, high: int) -> None:
    ck.integer(low, high)(name, value)


def _check_seconds(name: str, value: object, *, allow_zero: bool) -> None:
    ck.seconds(allow_zero=allow_zero)(name, value)
