"""Run settings: :class:`MapConfig`, the one place every option is declared.

Each option is a field of :class:`MapConfig` declared with :func:`option`: its name, type, default, check
and a one-line description. Everything else is derived from these fields: the keyword signatures of the
entry points and the README's option listing (:mod:`.signatures`), the ``polars-llm run`` flags
(:func:`polars_llm.cli.options.add_option_flags`). Adding an option is one field here (plus its
``MapOptions`` line for type checkers, which a test keeps in step). A config built from the environment
and ``./.env`` as well is :func:`~.environment.resolve_config`'s.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import math
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import polars as pl
from pydantic import BaseModel

from ..exceptions import ConfigError
from . import checks as ck
from .secret import Secret

__all__ = [
    "CHAT_ONLY",
    "DEFAULT_BASE_URL",
    "DEFAULT_CACHE",
    "DEFAULT_CACHE_PATH",
    "EMBED_ONLY",
    "INCLUDE_DTYPES",
    "CacheArg",
    "MapConfig",
    "Mode",
    "Transport",
    "Worker",
    "no_model_error",
    "option_fields",
    "resolve_cache",
]

DEFAULT_BASE_URL: Final = "https://openrouter.ai/api/v1"
DEFAULT_CACHE_PATH: Final = Path(".polars_llm") / "cache.duckdb"

Worker = Callable[[str], Awaitable[str]]
Transport = Literal["aiohttp", "openai"]
Mode = Literal["online", "batch"]
PackArg = int | Literal["auto"]
OnError = Literal["warn", "raise", "ignore"]


class _DefaultCache:
    """Sentinel for "the default cache file" (``.polars_llm/cache.duckdb`` under the working directory)."""

    def __repr__(self) -> str:
        return "DEFAULT_CACHE"


DEFAULT_CACHE: Final = _DefaultCache()
CacheArg = str | os.PathLike[str] | _DefaultCache | None


def resolve_cache(cache: CacheArg) -> Path | None:
    """Turn the ``cache=`` argument into an absolute path (or ``None`` for no file).

    >>> resolve_cache(None) is None, resolve_cache("duckdb:///x.duckdb").name
    (True, 'x.duckdb')
    """
    if cache is None:
        return None
    if isinstance(cache, _DefaultCache):
        return Path.cwd() / DEFAULT_CACHE_PATH
    if isinstance(cache, str | os.PathLike):
        path_text = os.fspath(cache)
        if not path_text:
            raise ConfigError("cache path is empty; pass cache=None to keep nothing on disk")
        if path_text.startswith("duckdb:///"):
            path_text = path_text[len("duckdb:///") :]
        return Path(path_text).expanduser().resolve()
    raise ConfigError(f"cache must be a path, DEFAULT_CACHE or None, got {type(cache).__name__}")


# --- checks that normalise ------------------------------------------------------------------------------


def _check_cache(name: str, value: Any) -> Path | None:
    return value if isinstance(value, Path) and value.is_absolute() else resolve_cache(value)


def _check_key(name: str, value: Any) -> Secret | None:
    if value is None or isinstance(value, Secret):
        return value
    if isinstance(value, str):
        return Secret(value)
    raise ConfigError(f"api_key must be a string, got {type(value).__name__}")


def _check_base_url(name: str, value: Any) -> str:
    if value is None:
        return DEFAULT_BASE_URL
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ConfigError(f"base_url must start with http:// or https://, got {value!r}")
    return value.rstrip("/")


def _check_model_name(name: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    return ck.text()(name, value)


# Per-row details ``include=`` can add to the output, with their dtypes; ``usage`` names three of them.
INCLUDE_DTYPES: Final[Mapping[str, pl.DataType]] = {
    "error": pl.String(),
    "error_kind": pl.String(),
    "attempts": pl.Int64(),
    "tokens_in": pl.Int64(),
    "tokens_out": pl.Int64(),
    "tokens_reasoning": pl.Int64(),
    "tokens_cached": pl.Int64(),
    "cost": pl.Float64(),
    "cached": pl.Boolean(),
}
INCLUDE_GROUPS: Final[Mapping[str, tuple[str, ...]]] = {"usage": ("tokens_in", "tokens_out", "cost")}


def _check_include(name: str, value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    try:
        names = [str(item).strip() for item in items if str(item).strip()]
    except TypeError:
        raise ConfigError(f"include must be a tuple of names, got {value!r}") from None
    out: list[str] = []
    for item in names:
        expanded = INCLUDE_GROUPS.get(item, (item,))
        for field_name in expanded:
            if field_name not in INCLUDE_DTYPES:
                known = ", ".join([*INCLUDE_DTYPES, *INCLUDE_GROUPS])
                raise ConfigError(f"include: unknown field {item!r}; choose from {known}")
            if field_name not in out:
                out.append(field_name)
    return tuple(out)


def _price_pair(name: str, value: Any) -> tuple[float, float]:
    ok = isinstance(value, tuple | list) and len(value) == 2
    ok = ok and all(ck.is_number(v) and math.isfinite(v) and v >= 0 for v in value)
    if not ok:
        raise ConfigError(
            f"{name} must be (input_usd_per_million_tokens, output_usd_per_million_tokens), two "
            f"non-negative numbers, or a mapping of model name to such a pair; got {value!r}"
        )
    return (float(value[0]), float(value[1]))


def _check_price(name: str, value: Any) -> Any:
    if isinstance(value, Mapping):
        if not value:
            raise ConfigError(f"{name} mapping is empty")
        return {str(model): _price_pair(f"{name}[{model!r}]", pair) for model, pair in value.items()}
    return _price_pair(name, value)


def _check_pack(name: str, value: Any) -> int | str:
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():  # the CLI flag's text
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ConfigError(
            f"pack must be a whole number of rows per request from 1 to 1000, or 'auto'; got {value!r}"
        )
    return value


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: sys.modules[module] is None (import blocked)
        return False


def _check_worker(name: str, value: Any) -> Any:
    if not callable(value):
        raise ConfigError("worker must be an async callable taking the prompt and returning a str")
    call = type(value).__call__ if not inspect.isroutine(value) else value
    if not (inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(call)):
        what = getattr(value, "__name__", type(value).__name__)
        raise ConfigError(
            f"worker {what!r} is not an `async def` function: the engine awaits it for every row. "
            "Wrap a synchronous one so it runs in a thread, e.g. "
            "`async def worker(p): return await anyio.to_thread.run_sync(my_function, p)`"
        )
    return value


# --- the schema -----------------------------------------------------------------------------------------

T = TypeVar("T")


def option(default: T, doc: str, check: ck.Check | None = None, *, cli: bool | str = True) -> T:
    """Declare one option: default, one-line description, check (may normalise) and its CLI form.

    ``cli``: ``True`` for a generated ``--flag``, ``False`` for no flag (with the reason in ``doc``), or
    the name of a hand-written flag that stands for it (e.g. ``"--schema"``).
    """
    return field(default=default, metadata={"doc": doc, "check": check, "cli": cli})


@dataclass(frozen=True, kw_only=True)
class MapConfig:
    """Every option of a run, validated (and normalised) on construction; see the README's listing.

    Build it with :func:`resolve_config`, which also reads ``MODEL`` / ``OPENROUTER_API_KEY`` /
    ``POLARS_LLM_BASE_URL`` from the environment or a ``.env`` file in the working directory.

    >>> cfg = MapConfig(model="m", api_key="sk-or-xyz", concurrency=4, transport="auto")
    >>> cfg.concurrency, cfg.transport, "sk-or-xyz" in repr(cfg)
    (4, 'aiohttp', False)
    """

    model: str | None = option(
        None, "model name, e.g. 'openai/gpt-4o-mini' (else $MODEL or .env)", _check_model_name
    )
    system: str | None = option(None, "system prompt, the same for every row", ck.optional(ck.text()))
    response_model: type[BaseModel] | None = option(
        None,
        "a pydantic BaseModel: `result` becomes a Struct shaped like it",
        ck.optional(lambda name, value: ck.check_model(value)),
        cli="--schema",
    )
    base_url: str | None = option(
        None, "OpenAI-compatible endpoint (else $POLARS_LLM_BASE_URL, else OpenRouter)", _check_base_url
    )
    api_key: str | Secret | None = field(
        default=None,
        repr=False,
        metadata={
            "doc": "else $OPENROUTER_API_KEY (or .env); never stored, never printed",
            "check": _check_key,
            "cli": False,
        },
    )
    temperature: float | None = option(
        0.0,
        "sampling temperature; None leaves it to the provider",
        ck.optional(ck.number(allow_low=True, high=2, what="between 0 and 2")),
    )
    max_tokens: int | None = option(None, "cap on tokens per answer", ck.optional(ck.integer(1, 10_000_000)))
    extra_body: Mapping[str, Any] | None = option(
        None, "extra request fields (provider routing etc.); part of the content key", ck.optional(ck.mapping)
    )
    dimensions: int | None = option(
        None,
        "embed only: vector length to ask for; `result` becomes Array(Float32, dimensions)",
        ck.optional(ck.integer(1, 1_000_000)),
    )
    batch_size: int | None = option(
        None, "embed only: texts per /embeddings request (None: 2048)", ck.optional(ck.integer(1, 100_000))
    )
    concurrency: int = option(32, "requests in flight at most", ck.integer(1, 100_000))
    rpm_limit: float | None = option(None, "client-side requests per minute", ck.optional(ck.number()))
    tpm_limit: float | None = option(None, "client-side tokens per minute", ck.optional(ck.number()))
    max_attempts: int = option(8, "attempts per request before its row is failed", ck.integer(1, 1000))
    timeout: float = option(60.0, "seconds to wait for one answer", ck.seconds())
    max_backoff: float = option(60.0, "cap in seconds on our own backoff between attempts", ck.seconds())
    max_wait: float = option(
        900.0, "longest provider-asked wait (Retry-After) honoured; longer stops the run", ck.seconds()
    )
    cache: CacheArg = option(
        DEFAULT_CACHE,
        "DuckDB file of jobs and results; None keeps nothing on disk",
        _check_cache,
        cli="--cache",
    )
    cache_wait: float = option(
        3600.0,
        "seconds to wait for another process using the cache to finish; 0: a StoreError at once",
        ck.seconds(allow_zero=True),
    )
    flush_interval: float = option(1.0, "seconds between writes of finished rows to the cache", ck.seconds())
    flush_rows: int = option(
        5000, "finished rows that trigger a write before flush_interval", ck.integer(1, 10_000_000)
    )
    fsync: bool = option(
        False,
        "flush the journal to disk as answers arrive, for power cuts (a process kill needs no fsync)",
        ck.boolean,
    )
    max_cost: float | None = option(
        None,
        "USD budget for the call's rows, earlier runs' spend on them included; stops before going over",
        ck.optional(ck.number()),
    )
    price: tuple[float, float] | Mapping[str, tuple[float, float]] | None = option(
        None,
        "(input, output) USD per million tokens, or {model: (input, output)}; else the provider's list",
        ck.optional(_check_price),
        cli="--price",
    )
    include: tuple[str, ...] = option(
        (),
        "per-row details added beside result/status: error, error_kind, attempts, usage, cost, cached, ...",
        _check_include,
    )
    chunk_rows: int = option(
        100_000,
        "rows per chunk when a run streams (LazyFrame.llm.map, polars-llm run): memory grows with it",
        ck.integer(100, 100_000_000),
    )
    progress: bool = option(True, "show a progress bar", ck.boolean, cli="--quiet")
    transport: Transport = option(
        "aiohttp",
        "'aiohttp' (lean, default) or 'openai' (the official SDK)",
        ck.choice("aiohttp", "openai", aliases={"auto": "aiohttp"}),
    )
    worker: Worker | None = option(
        None,
        "any `async def worker(prompt: str) -> str` instead of HTTP",
        ck.optional(_check_worker),
        cli=False,
    )
    mode: Mode = option(
        "online",
        "'online', or 'batch': the provider's batch API (about half the price, answers within 24 h)",
        ck.choice("online", "batch"),
    )
    wait: bool = option(
        True, "batch mode: wait for the batches and collect them (False: submit and return)", ck.boolean
    )
    poll_interval: float = option(
        5.0, "batch mode: first seconds between status checks (grows to 60 s)", ck.seconds()
    )
    batch_max_requests: int = option(
        50_000, "batch mode: requests per uploaded batch file at most", ck.integer(1, 10_000_000)
    )
    batch_max_bytes: int = option(
        200_000_000, "batch mode: bytes per uploaded batch file at most", ck.integer(1024, 10**12)
    )

    pack: PackArg = option(
        1,
        "rows per request for a response_model, a row operator (classify, filter, extract) or the pair "
        "checks of join and dedup: N, or 'auto'",
        _check_pack,
    )
    on_error: OnError = option(
        "warn",
        "row operators: a failed row is null and one warning counts them ('warn'), or 'raise', or 'ignore'",
        ck.choice("warn", "raise", "ignore"),
    )

    def __post_init__(self) -> None:
        ck.apply(self)
        if self.mode == "batch" and self.worker is not None:
            raise ConfigError(
                "mode='batch' sends the requests through the provider's batch API; it cannot run a "
                "worker= callable (drop worker=, or use mode='online')"
            )
        if self.transport == "openai" and self.worker is None and not _importable("openai"):
            raise ConfigError(
                "transport='openai' needs the official SDK, an optional extra: "
                "pip install 'polars-llm-map[openai]' (or leave the default transport='aiohttp')"
            )
        if self.mode == "batch" and self.cache is None:
            raise ConfigError(
                "mode='batch' needs a cache file to remember its batches between calls; "
                "pass cache=<path> (or leave the default) instead of cache=None"
            )
        if self.pack != 1 and self.mode == "batch":
            raise ConfigError(
                "pack= packs several rows into one online request; mode='batch' sends one request per "
                "row (at about half the price): drop pack= or use mode='online'"
            )
        if self.pack != 1 and self.worker is not None:
            raise ConfigError(
                "pack= builds packed chat requests; a worker= callable gets one prompt per call"
            )
        # a missing model is checked where the input is known (`model_required`): struct rows may name
        # their own (see _request/inputs.py)
        if self.worker is None and (self.api_key is None or not self.key):
            raise ConfigError(
                "no API key: pass api_key=..., or set OPENROUTER_API_KEY in the environment or .env"
            )

    @property
    def key(self) -> str:
        """The API key's value ("" when none)."""
        return self.api_key.get() if isinstance(self.api_key, Secret) else ""

    @property
    def cache_path(self) -> Path | None:
        """The cache file (absolute), or ``None`` for no file."""
        return self.cache  # type: ignore[return-value]  (normalised by its check)

    @property
    def url(self) -> str:
        """The base URL in use (``base_url`` normalised)."""
        return self.base_url  # type: ignore[return-value]  (normalised by its check)

    @property
    def endpoint(self) -> str:
        """Where answers come from: ``base_url``, or ``worker:<module>.<name>`` for a custom worker."""
        w = self.worker
        if w is None:
            return self.url
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

    def replace(self, **changes: Any) -> MapConfig:
        """A copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)


def option_fields() -> Iterator[dataclasses.Field[Any]]:
    """The declared options, in declaration order."""
    return iter(dataclasses.fields(MapConfig))


OPTION_NAMES: Final = frozenset(f.name for f in dataclasses.fields(MapConfig))
EMBED_ONLY: Final = frozenset({"dimensions", "batch_size"})
"""Options that only ``llm.embed`` takes (``llm.map`` refuses them)."""
CHAT_ONLY: Final = frozenset(
    {
        "system",
        "response_model",
        "temperature",
        "max_tokens",
        "worker",
        "mode",
        "wait",
        "poll_interval",
        "batch_max_requests",
        "batch_max_bytes",
        "chunk_rows",
        "pack",
        "on_error",
    }
)
"""Options that only ``llm.map`` takes (``llm.embed`` refuses them)."""


def no_model_error() -> ConfigError:
    return ConfigError(
        "no model given: pass model='provider/name' or set MODEL in the environment or .env "
        "(or give every row of a struct input its own `model`)"
    )
