"""Validators for option values, shared by :class:`~polars_llm.MapConfig` and the simulator's options.

Each factory returns a check ``(name, value) -> value`` that raises :class:`ConfigError` naming the option,
and may normalise the value (e.g. an alias to its canonical spelling).

>>> integer(1, 10)("concurrency", 4)
4
>>> integer(1, 10)("concurrency", 0)
Traceback (most recent call last):
...
polars_llm.exceptions.ConfigError: concurrency must be an integer between 1 and 10, got 0
>>> choice("aiohttp", "openai", aliases={"auto": "aiohttp"})("transport", "auto")
'aiohttp'
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from typing import Any

from ..exceptions import ConfigError

__all__ = [
    "Check",
    "boolean",
    "choice",
    "integer",
    "is_number",
    "mapping",
    "number",
    "optional",
    "seconds",
    "text",
]

Check = Callable[[str, Any], Any]


def is_number(value: object) -> bool:
    """A real int or float (``bool`` is not a number here)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def optional(check: Check) -> Check:
    """``None`` passes; anything else goes through ``check``."""

    def run(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return run


def integer(low: int, high: int) -> Check:
    def run(name: str, value: Any) -> Any:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ConfigError(f"{name} must be an integer between {low} and {high}, got {value!r}")
        return value

    return run


def number(*, low: float = 0.0, high: float = math.inf, allow_low: bool = False, what: str = "") -> Check:
    """A finite number in ``(low, high]`` (``[low, high]`` with ``allow_low``)."""

    def run(name: str, value: Any) -> Any:
        ok = is_number(value) and math.isfinite(value) and value <= high
        ok = ok and (value >= low if allow_low else value > low)
        if not ok:
            if what:
                raise ConfigError(f"{name} must be {what}, got {value!r}")
            bound = "non-negative" if allow_low and low == 0 else "positive" if low == 0 else f"> {low:g}"
            raise ConfigError(f"{name} must be a {bound} number, got {value!r}")
        return value

    return run


def seconds(*, allow_zero: bool = False) -> Check:
    kind = "a non-negative" if allow_zero else "a positive"
    return number(allow_low=allow_zero, what=f"{kind} number of seconds")


def text(*, empty: bool = True) -> Check:
    def run(name: str, value: Any) -> Any:
        if not isinstance(value, str) or (not empty and not value):
            raise ConfigError(f"{name} must be a {'' if empty else 'non-empty '}string, got {value!r}")
        return value

    return run


def boolean(name: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return value


def mapping(name: str, value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{name} must be a mapping, got {type(value).__name__}")
    return value


def choice(*values: Any, aliases: Mapping[Any, Any] | None = None) -> Check:
    aliases = dict(aliases or {})

    def run(name: str, value: Any) -> Any:
        with contextlib.suppress(TypeError):  # an unhashable value is no alias
            value = aliases.get(value, value)
        if value not in values:
            raise ConfigError(f"{name} must be one of {', '.join(map(repr, values))}, got {value!r}")
        return value

    return run
