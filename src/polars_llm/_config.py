"""Run settings: one frozen, validated dataclass built from arguments, the environment and ``.env``."""

from __future__ import annotations

import math
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from dotenv import dotenv_values
from pydantic import BaseModel

from .exceptions import ConfigError

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_CACHE",
    "DEFAULT_CACHE_PATH",
    "MapConfig",
    "Secret",
    "Worker",
    "resolve_config",
]

DEFAULT_BASE_URL: Final = "https://openrouter.ai/api/v1"
DEFAULT_CACHE_PATH: Final = Path(".polars_llm") / "cache.duckdb"

Worker = Callable[[str], Awaitable[str]]
Transport = Literal["auto", "aiohttp", "openai"]


class _DefaultCache:
    """Sentinel for "the default cache file" (``.polars_llm/cache.duckdb`` under the working directory)."""

    def __repr__(self) -> str:
        return "DEFAULT_CACHE"


DEFAULT_CACHE: Final = _DefaultCache()
CacheArg = str | os.PathLike[str] | _DefaultCache | None


class Secret:
    """A string that never shows itself in ``repr``/``str``.

    >>> s = Secret("sk-or-123")
    >>> s, str(s), s.get()
    (Secret('********'), '********', 'sk-or-123')
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    def __str__(self) -> str:
        return "********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> Any:
        raise TypeError("Secret values are not picklable")

    # Immutable, so copies may share it: copy.deepcopy(cfg) and dataclasses.asdict(cfg) work, still hidden.
    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret:
        return self


@dataclass(frozen=True, kw_only=True)
class MapConfig:
    """Everything a run needs, validated on construction.

    Build it with :func:`resolve_config`, which also reads ``MODEL`` / ``OPENROUTER_API_KEY`` from the
    environment or a ``.env`` file in the working directory.

    >>> cfg = MapConfig(model="m", api_key=Secret("sk-or-xyz"), concurrency=4)
    >>> cfg.concurrency, "sk-or-xyz" in repr(cfg)
    (4, False)
    """

    model: str
    api_key: Secret | None = field(default=None, repr=False)
    base_url: str = DEFAULT_BASE_URL
    system: str | None = None
    response_model: type[BaseModel] | None = None
    temperature: float | None = 0.0
    max_tokens: int | None = None
    extra_body: Mapping[str, Any] | None = None
    concurrency: int = 32
    rpm_limit: float | None = None
    tpm_limit: float | None = None
    max_attempts: int = 8
    timeout: float = 60.0
    cache: Path | None = None
    progress: bool = True
    worker: Worker | None = None
    transport: Transport = "auto"
    flush_interval: float = 1.0
    flush_rows: int = 5000
    max_backoff: float = 60.0

    def __post_init__(self) -> None:
        if self.worker is None:
            if not self.model or not isinstance(self.model, str):
                raise ConfigError(
                    "no model given: pass model='provider/name' or set MODEL in the environment or .env"
                )
            if self.api_key is None or not self.api_key.get():
                raise ConfigError(
                    "no API key: pass api_key=..., or set OPENROUTER_API_KEY in the environment or .env"
                )
            if not self.base_url.startswith(("http://", "https://")):
                raise ConfigError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        elif not callable(self.worker):
            raise ConfigError("worker must be an async callable taking the prompt and returning a str")
        _check_int("concurrency", self.concurrency, low=1, high=100_000)
        _check_int("max_attempts", self.max_attempts, low=1, high=1000)
        _check_int("flush_rows", self.flush_rows, low=1, high=10_000_000)
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens, low=1, high=10_000_000)
        for name in ("rpm_limit", "tpm_limit"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a positive number or None, got {value!r}")
        for name in ("timeout", "flush_interval", "max_backoff"):
            value = getattr(self, name)
            if not (_is_number(value) and value > 0 and math.isfinite(value)):
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.temperature is not None and not (_is_number(self.temperature) and 0 <= self.temperature <= 2):
            raise ConfigError(f"temperature must be between 0 and 2, got {self.temperature!r}")
        if self.system is not None and not isinstance(self.system, str):
            raise ConfigError(f"system must be a string, got {type(self.system).__name__}")
        if self.extra_body is not None and not isinstance(self.extra_body, Mapping):
            raise ConfigError(f"extra_body must be a mapping, got {type(self.extra_body).__name__}")
        if self.response_model is not None and not (
            isinstance(self.response_model, type) and issubclass(self.response_model, BaseModel)
        ):
            raise ConfigError(
                f"response_model must be a pydantic BaseModel subclass, got {self.response_model!r}"
            )
        if self.transport not in ("auto", "aiohttp", "openai"):
            raise ConfigError(f"transport must be 'auto', 'aiohttp' or 'openai', got {self.transport!r}")

    @property
    def endpoint(self) -> str:
        """Where answers come from: ``base_url``, or ``worker:<module>.<name>`` for a custom worker."""
        w = self.worker
        if w is None:
            return self.base_url
        return f"worker:{getattr(w, '__module__', '?')}.{getattr(w, '__qualname__', type(w).__name__)}"

    def params(self) -> dict[str, Any]:
        """Generation parameters that change the answer (they enter the content key)."""
        out: dict[str, Any] = {}
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        if self.extra_body:
            out["extra_body"] = dict(self.extra_body)
        return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(name: str, value: object, *, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer between {low} and {high}, got {value!r}")


def _env(name: str, dotenv: Mapping[str, str | None]) -> str | None:
    value = os.environ.get(name)
    if value:
        return value
    return dotenv.get(name) or None


def resolve_cache(cache: CacheArg) -> Path | None:
    """Turn the ``cache=`` argument into a path (or ``None`` for no file)."""
    if cache is None:
        return None
    if isinstance(cache, _DefaultCache):
        return Path.cwd() / DEFAULT_CACHE_PATH
    if isinstance(cache, str | os.PathLike):
        text = os.fspath(cache)
        if not text:
            raise ConfigError("cache path is empty; pass cache=None to keep nothing on disk")
        if text.startswith("duckdb:///"):
            text = text[len("duckdb:///") :]
        return Path(text).expanduser().resolve()
    raise ConfigError(f"cache must be a path, DEFAULT_CACHE or None, got {type(cache).__name__}")


def resolve_config(
    *,
    model: str | None = None,
    api_key: str | Secret | None = None,
    base_url: str | None = None,
    cache: CacheArg = DEFAULT_CACHE,
    api_key_env: str = "OPENROUTER_API_KEY",
    **options: Any,
) -> MapConfig:
    """Build a :class:`MapConfig` from arguments, then the environment, then ``./.env``.

    >>> cfg = resolve_config(model="m", api_key="k", cache=None, concurrency=8)
    >>> (cfg.model, cfg.concurrency, cfg.cache)
    ('m', 8, None)
    """
    dotenv_path = Path.cwd() / ".env"
    dotenv = dotenv_values(dotenv_path) if dotenv_path.is_file() else {}
    if model is None:
        model = _env("MODEL", dotenv)
    if api_key is None:
        api_key = _env(api_key_env, dotenv)
    if isinstance(api_key, str):
        api_key = Secret(api_key)
    if base_url is None:
        base_url = _env("POLARS_LLM_BASE_URL", dotenv)
    unknown = set(options) - _OPTION_NAMES
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
    try:
        return MapConfig(
            model=model or "",
            api_key=api_key,
            base_url=(base_url or DEFAULT_BASE_URL).rstrip("/"),
            cache=resolve_cache(cache),
            **options,
        )
    except TypeError as exc:  # wrong option types that dataclass itself rejects
        raise ConfigError(str(exc)) from None


_OPTION_NAMES = {
    "system",
    "response_model",
    "temperature",
    "max_tokens",
    "extra_body",
    "concurrency",
    "rpm_limit",
    "tpm_limit",
    "max_attempts",
    "timeout",
    "progress",
    "worker",
    "transport",
    "flush_interval",
    "flush_rows",
    "max_backoff",
}
