"""What is derived from :class:`~.options.MapConfig`'s fields: the entry points' keyword signatures
(:func:`with_options`) and the README's option listing (:func:`options_listing`).

>>> def f(x, **options): ...
>>> "concurrency" in str(inspect.signature(with_options(f)))
True
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from .options import CHAT_ONLY, DEFAULT_CACHE, option_fields

__all__ = ["options_listing", "with_embed_options", "with_options"]

F = TypeVar("F", bound=Callable[..., Any])


def with_options(fn: F) -> F:
    """Give ``fn(..., **options)`` a signature listing every option as keyword-only, with its default.

    ``help()``, Jupyter's Shift-Tab and ``inspect.signature`` then show the options of :class:`MapConfig`;
    type checkers read the ``Unpack[MapOptions]`` annotation of ``**options``.
    """
    return _signed(fn, frozenset())


def with_embed_options(fn: F) -> F:
    """:func:`with_options` for ``llm.embed``'s entry points: every option but the chat-only ones."""
    return _signed(fn, CHAT_ONLY)


def _signed(fn: F, skip: frozenset[str]) -> F:
    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in params} | skip
    extra = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
        for f in option_fields()
        if f.name not in taken
    ]
    positional = [p for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    keyword = [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    fn.__signature__ = sig.replace(parameters=[*positional, *keyword, *extra])  # type: ignore[attr-defined]
    return fn


def _shown(value: Any) -> str:
    return "DEFAULT_CACHE" if value is DEFAULT_CACHE else repr(value)


def options_listing() -> str:
    """The README's option listing: every option with its default and description."""
    lines = ['pl.col("prompt").llm.map(']
    for f in option_fields():
        lines.append(f"    {f.name}={_shown(f.default)},".ljust(30) + f"  # {f.metadata['doc']}")
        if f.name == "model":
            lines.append("    *,")
    lines.append(")")
    return "\n".join(lines)
