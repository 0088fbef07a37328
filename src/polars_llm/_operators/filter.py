"""``filter``: does a condition hold for each row? A Boolean column, so ``df.filter(...)`` reads like Polars.

The answer's schema is ``{"holds": boolean}``; the condition goes into the instructions (the system
prompt, once per pack with ``pack``) as a ``Condition:`` line. Over one column the row's text is the
prompt; a condition template naming several columns (``"{title} and {body} describe the same product"``)
sends each row's named values as ``name: value`` lines, the template itself staying in the instructions.
A row whose named value is null is not sent (null: ``df.filter`` drops it, as for any null).

:func:`condition_mask` is the private entry other operators build on (``join`` and ``dedup`` check
their candidate pairs with it): a condition over the rows of a frame, packed if asked.
"""

from __future__ import annotations

import dataclasses
import functools
import string
from collections.abc import Callable, Sequence
from typing import TypeVar, Unpack

import polars as pl
from pydantic import BaseModel, Field, create_model

from .._bridge import surfaced
from .._config import MapConfig, with_options
from .._pipeline import MapOptions, map_series
from ..exceptions import ConfigError
from .task import Task, operator_expr, operator_series, run_task, task_config, task_expr, task_options

__all__ = [
    "condition_fields",
    "condition_mask",
    "condition_request",
    "filter_series",
    "filter_task",
    "llm_filter",
    "llm_filter_frame",
]

FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)


@functools.cache
def _answer_model() -> type[BaseModel]:
    return create_model("Verdict", holds=(bool, Field(description="whether the condition holds")))


def condition_fields(condition: str) -> tuple[str, ...]:
    """The column names a condition template names (``{name}``), in order, once each.

    >>> condition_fields("{title} and {body} describe the same product ({title})")
    ('title', 'body')
    """
    if not isinstance(condition, str) or not condition.strip():
        raise ConfigError(f"filter: the condition must be a non-empty string, got {condition!r}")
    try:
        pieces = list(string.Formatter().parse(condition))
    except ValueError as exc:
        raise ConfigError(
            f"filter: condition {condition!r}: {exc} (write literal braces as {{{{ }}}})"
        ) from None
    names = [name for _, name, _, _ in pieces if name is not None]
    if any(not name for name in names):
        raise ConfigError(f"filter: condition {condition!r} has an empty {{}}: name a column in it")
    return tuple(dict.fromkeys(names))


def filter_task(condition: str, *, instructions: str | None = None, fields: Sequence[str] = ()) -> Task:
    """The :class:`~polars_llm._operators.task.Task` of ``filter`` (``fields``: the columns a template
    names, whose values each row's prompt lists)."""
    if not isinstance(condition, str) or not condition.strip():
        raise ConfigError(f"filter: the condition must be a non-empty string, got {condition!r}")
    if instructions is not None and not isinstance(instructions, str):
        raise ConfigError(f"filter: instructions must be a string, got {type(instructions).__name__}")
    lines = ["Decide whether the condition below holds for the input: answer true if it does, false if not."]
    if fields:
        lines.append(f"The input gives the values the condition names ({', '.join(fields)}), one per line.")
    if instructions:
        lines.append(instructions)
    lines.append(f"Condition: {' '.join(condition.split())}")
    return Task("filter", _answer_model(), "\n".join(lines), "holds", pl.Boolean())


def _row_prompt(fields: Sequence[str]) -> pl.Expr:
    """Each row's ``name: value`` lines (null when a named value is null)."""
    parts: list[pl.Expr] = []
    for i, name in enumerate(fields):
        parts += [pl.lit(("\n" if i else "") + f"{name}: "), pl.col(name).cast(pl.String)]
    return pl.concat_str(parts).alias("prompt")


def _check_columns(fields: Sequence[str], columns: Sequence[str], condition: str) -> None:
    missing = [name for name in fields if name not in columns]
    if missing:
        raise ConfigError(
            f"filter: the condition {condition!r} names column(s) {', '.join(map(repr, missing))} that the "
            f"frame does not have (columns: {', '.join(columns)})"
        )


def condition_request(
    frame: pl.DataFrame, condition: str, cfg: MapConfig, *, instructions: str | None = None
) -> tuple[pl.Series, Task, MapConfig]:
    """The prompts (one per row of ``frame``, null where a named value is null), the task and the
    ``MapConfig`` of checking ``condition`` over ``frame``: what :func:`condition_mask` sends, for an
    operator's estimate.

    >>> from polars_llm import MapConfig
    >>> frame = pl.DataFrame({"a": ["x #1"], "b": ["y #1"]})
    >>> prompts, task, cfg = condition_request(frame, "{a} matches {b}", MapConfig(model="m", api_key="k"))
    >>> prompts.to_list(), cfg.system.splitlines()[-1], task.dtype
    (['a: x #1\\nb: y #1'], 'Condition: {a} matches {b}', Boolean)
    """
    fields = condition_fields(condition)
    if not fields:
        raise ConfigError(f"condition_mask: the condition {condition!r} names no column")
    _check_columns(fields, frame.columns, condition)
    task = filter_task(condition, instructions=instructions, fields=fields)
    system = f"{cfg.system}\n\n{task.instructions}" if cfg.system else task.instructions
    prompts = frame.select(_row_prompt(fields)).to_series()
    return prompts, task, cfg.replace(response_model=task.model, system=system)


def condition_mask(
    frame: pl.DataFrame,
    condition: str,
    cfg: MapConfig,
    *,
    instructions: str | None = None,
    name: str = "filter",
    struct_form: bool = False,
    mapper: Callable[[pl.Series, MapConfig], pl.Series] = map_series,
) -> pl.Series:
    """Whether ``condition`` holds for each row of ``frame``: Boolean (null where failed or not sent).

    ``condition`` is a template naming columns of ``frame`` (``"{a} matches {b}"``); ``cfg`` the caller's
    options (``pack`` packs the rows; the task's model and instructions are added here). For operators
    built on ``filter`` (``join`` and ``dedup`` check their candidate pairs here): the frame of candidate
    rows is theirs to build; ``name`` is the operator's in the failure warning (or error, per
    ``on_error``); ``mapper`` answers the prompts (default ``llm.map``'s; a set operator passes its
    stage, which shares its ``max_cost`` and labels the progress bar).

    >>> import polars as pl
    >>> from polars_llm import MapConfig, sim
    >>> pairs = pl.DataFrame({"ad": ["dev #p1", "chef #c2"], "cv": ["coder #p1", "pilot #x9"]})
    >>> with sim.serve() as url:
    ...     cfg = MapConfig(model="m", base_url=url, api_key="k", cache=None, progress=False, pack=2)
    ...     mask = condition_mask(pairs, "{ad} fits {cv}", cfg)
    >>> mask.to_list()
    [True, False]
    """
    prompts, task, check_cfg = condition_request(frame, condition, cfg, instructions=instructions)
    task = dataclasses.replace(task, name=name)
    return run_task(prompts, task, check_cfg, struct_form, mapper)


@surfaced
@with_options
def llm_filter(
    expr: pl.Expr | str, condition: str, *, instructions: str | None = None, **options: Unpack[MapOptions]
) -> pl.Expr:
    """An expression saying whether ``condition`` holds for each row's text: Boolean, null where the row
    failed or was not sent (see :mod:`.task`), so ``df.filter(...)`` keeps the rows where it holds.

    >>> import polars as pl
    >>> from polars_llm import sim
    >>> df = pl.DataFrame({"review": ["Arrived two weeks late", "Lovely teapot", "Late again!"]})
    >>> with sim.serve() as url:
    ...     late = df.filter(pl.col("review").llm.filter("mentions late delivery", model="m", base_url=url,
    ...                                                  api_key="k", cache=None, progress=False))
    >>> late["review"].to_list()
    ['Arrived two weeks late', 'Late again!']
    """
    return operator_expr(expr, filter_task(condition, instructions=instructions), options)


@surfaced
@with_options
def filter_series(
    series: pl.Series, condition: str, *, instructions: str | None = None, **options: Unpack[MapOptions]
) -> pl.Series:
    """:func:`llm_filter` on a Series (eager): the Boolean Series."""
    return operator_series(series, filter_task(condition, instructions=instructions), options)


@surfaced
@with_options
def llm_filter_frame(
    frame: FrameT, condition: str, *, instructions: str | None = None, **options: Unpack[MapOptions]
) -> FrameT:
    """The rows of ``frame`` for which the condition template holds (``"{title} and {body} describe the
    same product"``: each ``{name}`` a column). A column the template names that the frame does not have
    is a :class:`ConfigError` before any request. Rows that failed are dropped (and counted in the
    warning, see :mod:`.task`); ``include`` does not apply (use the expression form for details).

    >>> import polars as pl
    >>> from polars_llm import sim
    >>> df = pl.DataFrame({"title": ["Kettle", "Refund please"], "body": ["asks for a refund", "thanks"]})
    >>> with sim.serve() as url:
    ...     out = df.llm.filter("{title} or {body} asks for a refund", model="m", base_url=url, api_key="k",
    ...                         cache=None, progress=False)
    >>> out["title"].to_list()
    ['Kettle', 'Refund please']
    """
    fields = condition_fields(condition)
    columns = frame.collect_schema().names()
    if not fields:  # no placeholder: the condition over every column would be a guess; say so
        raise ConfigError(
            f"df.llm.filter: the condition {condition!r} names no column; write {{column}} in it, or use "
            "pl.col(name).llm.filter(condition)"
        )
    _check_columns(fields, columns, condition)
    task = filter_task(condition, instructions=instructions, fields=fields)
    opts, struct_form = task_options(options)
    if struct_form:
        raise ConfigError("df.llm.filter returns the rows that hold; include= needs the expression form")
    cfg = task_config(task, opts, model_required=True)
    return frame.filter(task_expr(_row_prompt(fields), task, cfg))
