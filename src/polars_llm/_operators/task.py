"""A row operator's task: the answer model, the instructions, and which part of the answer is the value.

``classify``, ``filter`` and ``extract`` each build a :class:`Task`; everything else is shared and runs on
the pipeline of ``.llm.map``: the task's model becomes the ``response_model`` and its instructions the
system prompt (after the caller's own ``system``), so every option, the cache, ``pack`` and ``estimate``
work unchanged. Each row's content key is the key of that ``.llm.map`` request.

**Failures as data.** The operators return the typed value itself (``Enum``, ``Boolean``, ``Struct``),
null where a row failed or was not sent, so ``df.filter(...)``, ``group_by`` and comparisons read like
Polars. The rows that are null for that reason are never silent: ``on_error="warn"`` (default) warns once
per call with their count and how to see why; ``include=("status", "error")`` returns
``Struct{result, status, error}`` instead, without the warning (``result`` the typed value; any
``include`` gives this form);
``on_error="raise"`` raises :class:`~polars_llm.RowsFailedError`; ``"ignore"`` says nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl
from pydantic import BaseModel

from .._config import INCLUDE_DTYPES, MapConfig, resolve_config
from .._cost import Estimate
from .._pipeline import EXPRESSION_ESTIMATORS, chunked_expr, estimate_series, map_series, names_models
from ..exceptions import ConfigError, RowsFailedError

__all__ = [
    "Task",
    "estimate_task",
    "operator_expr",
    "operator_series",
    "run_task",
    "task_config",
    "task_expr",
    "task_options",
]

_ATTR = "_polars_llm_task"  # on an operator's expression: (source, task, cfg), read by ``estimate``


@dataclass(frozen=True, slots=True)
class Task:
    """One row operator's request (see the module docstring).

    ``field``: the answer field that is the value (``None``: the whole answer, a Struct); ``dtype``: the
    value's dtype, known before any request.
    """

    name: str
    model: type[BaseModel]
    instructions: str
    field: str | None
    dtype: pl.DataType


def task_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The options for :class:`MapConfig` and whether the Struct form was asked (any ``include``; the
    operators also accept ``"status"``, always part of that form)."""
    out = dict(options)
    include = out.pop("include", ())
    items = include.split(",") if isinstance(include, str) else include
    try:
        names = [str(item).strip() for item in items if str(item).strip()]
    except TypeError:
        raise ConfigError(f"include must be a tuple of names, got {include!r}") from None
    out["include"] = tuple(name for name in names if name != "status")
    if out.get("response_model") is not None:
        raise ConfigError("the row operators build their own response model; response_model= is for .llm.map")
    return out, bool(names)


def task_config(task: Task, options: Mapping[str, Any], *, model_required: bool = True) -> MapConfig:
    """The ``MapConfig`` of a task's requests: the caller's options, the task's model and instructions
    (after the caller's own ``system``). Raises :class:`ConfigError` before any request."""
    cfg = resolve_config(model_required=model_required, **options)
    system = f"{cfg.system}\n\n{task.instructions}" if cfg.system else task.instructions
    return cfg.replace(response_model=task.model, system=system)


def output_dtype(task: Task, cfg: MapConfig, struct_form: bool) -> pl.DataType:
    if not struct_form:
        return task.dtype
    details = {name: INCLUDE_DTYPES[name] for name in cfg.include}
    return pl.Struct({"result": task.dtype, "status": pl.String(), **details})


def _report(task: Task, mapped: pl.Series, cfg: MapConfig, struct_form: bool) -> None:
    """Warn once (or raise, with ``on_error="raise"``) about rows left null by a failure or not sent; the
    Struct form shows their status instead of warning."""
    if cfg.on_error == "ignore" or (struct_form and cfg.on_error == "warn"):
        return
    status = mapped.struct.field("status")
    failed = int((status == "failed").sum())
    unsent = int(status.is_in(["pending", "submitted"]).sum())
    if not failed and not unsent:
        return
    parts = [f"{failed:,} failed"] if failed else []
    parts += [f"{unsent:,} not answered yet (pending or in a running batch)"] if unsent else []
    rows = f"{len(status):,} rows"
    message = (
        f"llm.{task.name}: {' and '.join(parts)} of {rows}; their value is null. "
        "Pass include=('status', 'error') to see why, or on_error='raise'; a rerun sends only them"
    )
    if cfg.on_error == "raise":
        errors: tuple[str, ...] = ()
        if "error" in mapped.struct.fields:
            picked = mapped.struct.field("error").filter(status == "failed").drop_nulls().head(5)
            errors = tuple(picked.to_list())
        raise RowsFailedError(message, failed=failed, unsent=unsent, errors=errors)
    warnings.warn(message, UserWarning, stacklevel=2)


def finish(task: Task, mapped: pl.Series, struct_form: bool, name: str) -> pl.Series:
    """The operator's column from the mapped ``Struct{result, status, …}``: the value, or the Struct form."""
    result = mapped.struct.field("result")
    value = result.struct.field(task.field) if task.field is not None else result
    value = value.cast(task.dtype).alias("result")
    if not struct_form:
        return value.rename(name)
    rest = [mapped.struct.field(f) for f in mapped.struct.fields if f != "result"]
    return pl.DataFrame([value, *rest]).to_struct(name)


def task_steps(
    task: Task, cfg: MapConfig, struct_form: bool = False
) -> tuple[MapConfig, Callable[[pl.Series, pl.Series], pl.Series]]:
    """How to run ``task``: the map's config, and what turns (input, mapped Struct) into its column."""
    quoted = cfg.on_error == "raise" and "error" not in cfg.include  # to quote the errors it raises with

    def done(series: pl.Series, mapped: pl.Series) -> pl.Series:
        _report(task, mapped, cfg, struct_form)
        if quoted:
            mapped = mapped.struct.unnest().drop("error").to_struct(mapped.name)
        return finish(task, mapped, struct_form, series.name)

    return (cfg.replace(include=(*cfg.include, "error")) if quoted else cfg), done


def run_task(
    series: pl.Series,
    task: Task,
    cfg: MapConfig,
    struct_form: bool = False,
    mapper: Callable[[pl.Series, MapConfig], pl.Series] = map_series,
) -> pl.Series:
    """Run ``task`` over a Series of texts: its value column (see the module docstring). ``mapper``
    answers the prompts (``llm.map``'s ``map_series``; a set operator passes its labelled stage)."""
    map_cfg, done = task_steps(task, cfg, struct_form)
    return done(series, mapper(series, map_cfg))


def task_expr(source: pl.Expr, task: Task, cfg: MapConfig, struct_form: bool = False) -> pl.Expr:
    """The operator as an expression over ``source`` (one String column)."""

    map_cfg, done = task_steps(task, cfg, struct_form)
    expr = chunked_expr(source, map_cfg, output_dtype(task, cfg, struct_form), done)
    setattr(expr, _ATTR, (source, task, cfg))
    return expr


def operator_expr(expr: pl.Expr | str, task: Task, options: Mapping[str, Any]) -> pl.Expr:
    """An operator's expression over ``expr`` (a column name or an expression), options checked here."""
    source = pl.col(expr) if isinstance(expr, str) else expr
    opts, struct_form = task_options(options)
    cfg = task_config(task, opts, model_required=not names_models(source))
    return task_expr(source, task, cfg, struct_form)


def operator_series(series: pl.Series, task: Task, options: Mapping[str, Any]) -> pl.Series:
    """An operator over a Series, eagerly (errors keep their attributes: no Polars UDF in between)."""
    opts, struct_form = task_options(options)
    return run_task(series, task, task_config(task, opts, model_required=False), struct_form)


def estimate_task(
    data: pl.DataFrame | pl.LazyFrame | pl.Series, expr: pl.Expr, options: Mapping[str, Any]
) -> Estimate | None:
    """What an operator expression (as ``.llm.classify`` etc. return it, not aliased) would send and cost
    over ``data``, ``options`` applied over its own; ``None`` for any other expression."""
    found = getattr(expr, _ATTR, None)
    if found is None:
        return None
    source, _, cfg = found
    cfg = cfg.replace(**options) if options else cfg
    if isinstance(data, pl.Series):
        return estimate_series(data, cfg)
    return estimate_series(data.lazy().select(source).collect().to_series(), cfg)


EXPRESSION_ESTIMATORS.append(estimate_task)
