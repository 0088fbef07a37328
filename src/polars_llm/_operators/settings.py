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
from dataclasses import dataclass
from typing import Any, Final, Literal

from .. import _checks as ck
from ..exceptions import ConfigError

__all__ = ["DedupSettings", "JoinSettings", "ReduceSettings", "TopKSettings"]

DEFAULT_MAX_INPUT_TOKENS: Final = 8_000
"""Input tokens per request when ``max_input_tokens`` is not given (a budget most chat models exceed)."""


def _instruction(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
    return value.strip()


def _checked(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        check = f.metadata.get("check")
        if check is not None:
            value = getattr(obj, f.name)
            checked = check(f.name, value)
            if checked is not value:
                object.__setattr__(obj, f.name, checked)


def _setting(default: Any, check: ck.Check) -> Any:
    return dataclasses.field(default=default, metadata={"check": check})


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
        _checked(self)

    @property
    def input_tokens(self) -> int:
        return self.max_input_tokens or DEFAULT_MAX_INPUT_TOKENS


@dataclass(frozen=True, kw_only=True)
class JoinSettings:
    """``join``: the statement template, candidate blocking (``k`` right rows per left row; ``None``:
    every pair) by embeddings of ``embed_model``, and Polars' ``how`` / ``suffix``."""

    template: str = _setting("", _instruction)
    how: Literal["inner", "left"] = _setting("inner", ck.choice("inner", "left"))
    k: int | None = _setting(10, ck.optional(_K))
    embed_model: str | None = _setting(None, _EMBED_MODEL)
    dimensions: int | None = _setting(None, _DIMENSIONS)
    suffix: str = _setting("_right", ck.text(empty=False))

    def __post_init__(self) -> None:
        _checked(self)


@dataclass(frozen=True, kw_only=True)
class TopKSettings:
    """``top_k``: how many, by what instruction, and how many items one ranking request holds."""

    k: int = _setting(10, _K)
    instruction: str = _setting("", _instruction)
    window: int = _setting(40, ck.integer(2, 1_000))
    max_input_tokens: int | None = _setting(None, _TOKENS)

    def __post_init__(self) -> None:
        _checked(self)


@dataclass(frozen=True, kw_only=True)
class DedupSettings:
    """``dedup``: candidate pairs are each value's ``k`` nearest values by embedding with cosine
    similarity ≥ ``threshold``; the LLM confirms each pair against ``instruction``."""

    k: int = _setting(5, _K)
    threshold: float = _setting(0.5, ck.number(low=-1.0, high=1.0, allow_low=True, what="between -1 and 1"))
    embed_model: str | None = _setting(None, _EMBED_MODEL)
    dimensions: int | None = _setting(None, _DIMENSIONS)
    instruction: str = _setting("Do these two values refer to the same entity?", _instruction)

    def __post_init__(self) -> None:
        _checked(self)
