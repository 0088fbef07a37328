"""The set operators' own settings: frozen dataclasses validated on construction.

Options every request shares (model, cache, concurrency, ``max_cost``, ``response_model`` …) are
:class:`~polars_llm.MapConfig`'s; what only one operator takes (its instruction, ``k``, a threshold, the
embedding model) is declared here, once, with its check. A bad value raises
:class:`~polars_llm.ConfigError` when the settings are made, before any request.

>>> JoinSettings(template="{left.a} fits {right.b}", k=0)
Traceback (most recent call last):
...
polars_llm.exceptions.ConfigError: k must be an integer between 1 and 100000, got 0
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from .._config import checks as ck
from .._pipeline import MapOptions
from ..exceptions import ConfigError

__all__ = [
    "DedupOptions",
    "DedupSettings",
    "JoinOptions",
    "JoinSettings",
    "ReduceOptions",
    "ReduceSettings",
    "TopKOptions",
    "TopKSettings",
    "take",
    "with_settings",
]

DEFAULT_MAX_INPUT_TOKENS: Final = 8_000
"""Input tokens per request when ``max_input_tokens`` is not given (a budget most chat models exceed)."""


def _instruction(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
    return value.strip()


def _setting(default: Any, check: ck.Check) -> Any:
    return dataclasses.field(default=default, metadata={"check": check})


def _columns(name: str, value: Any) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value or ())
    if not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{name} must be a column name or a sequence of them, got {value!r}")
    return names


_TOKENS = ck.optional(ck.integer(64, 10_000_000))
_K = ck.integer(1, 100_000)
_EMBED_MODEL = ck.optional(ck.text(empty=False))
_DIMENSIONS = ck.optional(ck.integer(1, 1_000_000))


@dataclass(frozen=True, kw_only=True)
class ReduceSettings:
    """``reduce``: the instruction, and the input tokens one request may hold (leaves pack rows up to it)."""

    instruction: str = _setting("", _instruction)
    max_input_tokens: int | None = _setting(None, _TOKENS)

    def __post_init__(self) -> None:
        ck.apply(self)


@dataclass(frozen=True, kw_only=True)
class JoinSettings:
    """``join``: the statement template, candidate blocking (``k`` right rows per left row; ``None``:
    every pair) by embeddings of ``embed_model``, and Polars' ``how`` / ``suffix``."""

    template: str = _setting("", _instruction)
    how: Literal["inner", "left"] = _setting("inner", ck.choice("inner", "left"))
    k: int | None = _setting(10, ck.optional(_K))
    embed_model: str | None = _setting(None, _EMBED_MODEL)
    embed_dimensions: int | None = _setting(None, _DIMENSIONS)
    suffix: str = _setting("_right", ck.text(empty=False))

    def __post_init__(self) -> None:
        ck.apply(self)


@dataclass(frozen=True, kw_only=True)
class TopKSettings:
    """``top_k``: how many, by what instruction, and how many items one ranking request holds."""

    k: int = _setting(10, _K)
    instruction: str = _setting("", _instruction)
    column: str = _setting("", ck.text(empty=False))
    by: str | Sequence[str] | None = _setting(None, _columns)
    window: int = _setting(40, ck.integer(2, 1_000))
    max_input_tokens: int | None = _setting(None, _TOKENS)

    def __post_init__(self) -> None:
        ck.apply(self)


@dataclass(frozen=True, kw_only=True)
class DedupSettings:
    """``dedup``: candidate pairs are each value's ``k`` nearest values by embedding with cosine
    similarity ≥ ``threshold``; the LLM confirms each pair against ``instruction``."""

    k: int = _setting(5, _K)
    threshold: float = _setting(0.5, ck.number(low=-1.0, high=1.0, allow_low=True, what="between -1 and 1"))
    embed_model: str | None = _setting(None, _EMBED_MODEL)
    embed_dimensions: int | None = _setting(None, _DIMENSIONS)
    instruction: str = _setting("Do these two values refer to the same entity?", _instruction)

    def __post_init__(self) -> None:
        ck.apply(self)


S = TypeVar("S")
F = TypeVar("F", bound=Callable[..., Any])


def take(cls: type[S], options: dict[str, Any], **given: Any) -> tuple[S, dict[str, Any]]:
    """Split ``options`` into ``cls``'s settings (made and checked, with ``given``) and the rest (the
    ``MapConfig`` options).

    >>> settings, rest = take(TopKSettings, {"window": 8, "concurrency": 4}, k=2, instruction="b", column="t")
    >>> settings.window, rest
    (8, {'concurrency': 4})
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    mine = {name: options[name] for name in options if name in names}
    rest = {name: value for name, value in options.items() if name not in names}
    return cls(**given, **mine), rest


def with_settings(cls: type[Any]) -> Callable[[F], F]:
    """List ``cls``'s settings (those not already parameters) as keyword-only parameters of ``fn``'s
    signature, before its ``**options`` (which :func:`~polars_llm._config.with_options` then expands)."""

    def sign(fn: F) -> F:
        sig = inspect.signature(fn)
        params = list(sig.parameters.values())
        taken = {p.name for p in params}
        extra = [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
            for f in dataclasses.fields(cls)
            if f.name not in taken and f.default is not dataclasses.MISSING
        ]
        var = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
        rest = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
        fn.__signature__ = sig.replace(parameters=[*rest, *extra, *var])  # type: ignore[attr-defined]
        return fn

    return sign


# --- for type checkers: ``**options: Unpack[...]`` of the entry points (a test keeps them in step) -------


class ReduceOptions(MapOptions, total=False):
    max_input_tokens: int | None


class JoinOptions(MapOptions, total=False):
    how: Literal["inner", "left"]
    k: int | None
    embed_model: str | None
    embed_dimensions: int | None
    suffix: str


class TopKOptions(MapOptions, total=False):
    column: str
    by: str | Sequence[str] | None
    window: int
    max_input_tokens: int | None


class DedupOptions(MapOptions, total=False):
    k: int
    threshold: float
    embed_model: str | None
    embed_dimensions: int | None
    instruction: str
