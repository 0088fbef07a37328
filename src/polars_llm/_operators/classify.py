"""``classify``: one label (or several) per row, as a ``pl.Enum`` column, constrained by the schema.

The answer's schema is ``{"label": {"enum": [...labels]}}`` (``{"labels": [...]}`` with
``multi_label=True``), so the provider's structured output can only give a valid label, and pydantic
checks it again: a row gets a label of the set or fails — never free text matched afterwards. Label
descriptions and examples go into the instructions (the system prompt, sent once per pack with ``pack``).
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, Unpack

import polars as pl
from pydantic import BaseModel, Field, create_model

from .._bridge import surfaced
from .._config import with_options
from .._pipeline import MapOptions
from ..exceptions import ConfigError
from .task import Task, operator_expr, operator_series

__all__ = ["Labels", "classify_series", "classify_task", "label_names", "llm_classify"]

Labels = Sequence[str] | Mapping[str, str] | pl.Enum | type[enum.Enum]


def label_names(labels: Any) -> tuple[tuple[str, ...], dict[str, str]]:
    """The labels in order and their descriptions, from any accepted form; :class:`ConfigError` for an
    empty set, a duplicate or a label that is not a non-empty string.

    >>> label_names({"spam": "unsolicited ads", "ham": "anything else"})
    (('spam', 'ham'), {'spam': 'unsolicited ads', 'ham': 'anything else'})
    >>> label_names(pl.Enum(["low", "high"]))[0]
    ('low', 'high')
    """
    described: dict[str, str] = {}
    if isinstance(labels, pl.Enum):
        names: list[Any] = labels.categories.to_list()
    elif isinstance(labels, type) and issubclass(labels, enum.Enum):
        names = [member.value for member in labels]
    elif isinstance(labels, Mapping):
        names = list(labels)
        for name, text in labels.items():
            if text is not None and not isinstance(text, str):
                raise ConfigError(f"classify: label {name!r} has a non-string description {text!r}")
            if text:
                described[name] = text
    elif isinstance(labels, str) or not isinstance(labels, Iterable):
        raise ConfigError(
            "classify: labels must be a list of strings, a mapping label -> description, a pl.Enum or an "
            f"enum.Enum; got {labels!r}"
        )
    else:
        names = list(labels)
    if not names:
        raise ConfigError("classify: the label list is empty; give at least one label")
    bad = [name for name in names if not isinstance(name, str) or not name.strip()]
    if bad:
        raise ConfigError(f"classify: every label must be a non-empty string; got {bad[0]!r}")
    seen: set[str] = set()
    twice = [name for name in names if name in seen or seen.add(name)]
    if twice:
        raise ConfigError(f"classify: duplicate label(s) {', '.join(map(repr, dict.fromkeys(twice)))}")
    return tuple(names), described


@functools.lru_cache(maxsize=128)
def _answer_model(labels: tuple[str, ...], multi: bool) -> type[BaseModel]:
    kind: Any = Literal.__getitem__(labels)
    if multi:
        return create_model("Labels", labels=(list[kind], Field(description="every label that applies")))
    return create_model("Label", label=(kind, Field(description="the one label that fits best")))


def _examples(examples: Any, labels: tuple[str, ...], multi: bool) -> list[str]:
    if examples is None:
        return []
    try:
        pairs = [(text, label) for text, label in examples]
    except (TypeError, ValueError):
        raise ConfigError("classify: examples must be (text, label) pairs") from None
    lines = ["Examples:"]
    for text, label in pairs:
        given = [label] if isinstance(label, str) or not multi else list(label)
        wrong = [g for g in given if g not in labels]
        if not isinstance(text, str) or wrong:
            raise ConfigError(f"classify: example ({text!r}, {label!r}) needs a text and label(s) of the set")
        lines += [f"Input: {text}", f"Label{'s' if multi else ''}: {', '.join(given) or '(none)'}"]
    return lines


def classify_task(
    labels: Labels, *, instructions: str | None = None, multi_label: bool = False, examples: Any = None
) -> Task:
    """The :class:`~polars_llm._operators.task.Task` of ``classify`` (checked: :class:`ConfigError`).

    >>> task = classify_task(["pos", "neg"], multi_label=True)
    >>> task.dtype, task.field
    (List(Enum(categories=['pos', 'neg'])), 'labels')
    """
    names, described = label_names(labels)
    if instructions is not None and not isinstance(instructions, str):
        raise ConfigError(f"classify: instructions must be a string, got {type(instructions).__name__}")
    multi = bool(multi_label)
    what = "every label that applies (none if no label does)" if multi else "the one label that fits best"
    lines = [f"Classify the input: answer with {what}, from these labels:"]
    lines += [f"- {name}: {described[name]}" if name in described else f"- {name}" for name in names]
    if instructions:
        lines += ["", instructions]
    if examples is not None:
        lines += ["", *_examples(examples, names, multi)]
    dtype: pl.DataType = pl.Enum(list(names))
    return Task(
        name="classify",
        model=_answer_model(names, multi),
        instructions="\n".join(lines),
        field="labels" if multi else "label",
        dtype=pl.List(dtype) if multi else dtype,
    )


@surfaced
@with_options
def llm_classify(
    expr: pl.Expr | str,
    labels: Labels,
    *,
    instructions: str | None = None,
    multi_label: bool = False,
    examples: Sequence[tuple[str, str | Sequence[str]]] | None = None,
    **options: Unpack[MapOptions],
) -> pl.Expr:
    """An expression labelling each row's text: a ``pl.Enum`` of ``labels`` (``List(Enum)`` with
    ``multi_label=True``), null where the row failed or was not sent (see :mod:`.task`).

    ``labels``: a list of strings, a mapping label → description (descriptions go into the prompt), a
    ``pl.Enum`` or an ``enum.Enum`` of string values; ``examples``: ``(text, label)`` pairs shown to the
    model; ``instructions``: added to the prompt. Every ``.llm.map`` option applies (``pack`` too).

    >>> import polars as pl
    >>> from polars_llm import sim
    >>> df = pl.DataFrame({"review": ["Great kettle, love it", "Broken on arrival: bad", None]})
    >>> with sim.serve() as url:
    ...     out = df.with_columns(
    ...         pl.col("review").llm.classify(["great", "bad"], model="m", base_url=url, api_key="k",
    ...                                      cache=None, progress=False).alias("label"))
    >>> out["label"].to_list(), out["label"].dtype
    (['great', 'bad', None], Enum(categories=['great', 'bad']))
    """
    return operator_expr(
        expr,
        classify_task(labels, instructions=instructions, multi_label=multi_label, examples=examples),
        options,
    )


@surfaced
@with_options
def classify_series(
    series: pl.Series,
    labels: Labels,
    *,
    instructions: str | None = None,
    multi_label: bool = False,
    examples: Sequence[tuple[str, str | Sequence[str]]] | None = None,
    **options: Unpack[MapOptions],
) -> pl.Series:
    """:func:`llm_classify` on a Series (eager)."""
    return operator_series(
        series,
        classify_task(labels, instructions=instructions, multi_label=multi_label, examples=examples),
        options,
    )
