"""``reduce``: one answer per group from many rows — a tree of requests, not a fold.

**Leaves** pack a group's rows, in order, into as few requests as fit ``max_input_tokens`` (else the
model's listed context, else 8,000; 4 characters per token: :mod:`.context`); **each level**
packs the answers of the level below the same way, until one answer per group remains. A level's requests
of *all* groups are one engine run (:func:`~polars_llm._operators.stage.map_stage`: concurrent, paced,
budgeted), so 200 groups cost about the tree's depth in round trips, not 200 × depth. The result does not
depend on how requests interleave, only on the rows and their order.

Every node is cached by its prompt, which is the instruction and its children's texts: a rerun sends
nothing, and rows appended to one group change only that group's last leaf and the nodes above it. With
``response_model``, each group's top node answers in that shape (the levels below answer in text); the
groups still needing lower levels then run as a second engine run of that level.

A node that fails (after the engine's retries) fails its group: ``status`` is ``failed``, ``result`` null;
the other groups are unaffected, and a rerun retries only what failed. A group with no non-null row is
``null`` and sends nothing.

Three forms (all forward here): ``pl.col("review").llm.reduce(instruction, model)`` in ``group_by().agg``
(Polars hands the expression every group at once: it is ``implode()`` then an elementwise batch map) or in
``select`` (the whole column); ``df.llm.reduce("review", instruction, model, by="product")``, which keeps the
group keys beside ``result`` and ``status``.

>>> import polars as pl, polars_llm
>>> from polars_llm import sim
>>> df = pl.DataFrame({"product": ["kettle", "kettle", "lamp"],
...                    "review": ["lid broken", "broken handle", "too dim"]})
>>> with sim.serve() as url:
...     out = df.llm.reduce("review", "Summarise the complaints", "m", by="product", base_url=url,
...                         api_key="k", cache=None, progress=False)
>>> out.rows()
[('kettle', 'summary: broken lid handle', 'done'), ('lamp', 'summary: dim', 'done')]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeVar, Unpack

import polars as pl

from .._bridge import surfaced
from .._config import MapConfig, resolve_config, with_options
from .._cost import DEFAULT_CHARS_PER_TOKEN, Estimate
from .._request import request_spec
from ..exceptions import ColumnTypeError, ConfigError
from .context import input_tokens
from .estimate import PlanEstimate
from .settings import ReduceOptions, ReduceSettings, take, with_settings
from .stage import Spend, estimate_projected, estimate_prompts, map_stage

__all__ = [
    "Keys",
    "estimate_reduce",
    "leaf_prompt",
    "llm_reduce",
    "llm_reduce_frame",
    "pack",
    "reduce_estimate",
    "reduce_frame",
    "reduce_groups",
    "reduce_udf",
]

FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)
Frame = pl.DataFrame | pl.LazyFrame
Keys = str | Sequence[str] | None
_LEAF: Final = "Answer once, for all {n} texts below together."
_UPPER: Final = (
    "The {n} texts below are answers to that instruction, each for one part of the same input. "
    "Combine them into one answer for the whole input."
)


def _block(text: str) -> str:
    return f"<text>\n{text}\n</text>\n"


def leaf_prompt(instruction: str, texts: Sequence[str]) -> str:
    """The prompt of a leaf: the instruction, then the rows as ``<text>`` blocks.

    >>> print(leaf_prompt("Summarise", ["a", "b"]))
    Summarise
    <BLANKLINE>
    Answer once, for all 2 texts below together.
    <BLANKLINE>
    <text>
    a
    </text>
    <text>
    b
    </text>
    <BLANKLINE>
    """
    return f"{instruction}\n\n{_LEAF.format(n=len(texts))}\n\n" + "".join(map(_block, texts))


def upper_prompt(instruction: str, texts: Sequence[str]) -> str:
    """The prompt of a node above the leaves: the instruction, then its children's answers."""
    return f"{instruction}\n\n{_UPPER.format(n=len(texts))}\n\n" + "".join(map(_block, texts))


def pack(lengths: Sequence[int], budget: int, *, at_least: int = 1) -> list[range]:
    """Consecutive runs of items whose lengths (plus a block's framing) fit ``budget`` characters,
    greedily in order; an item alone over the budget is a run of its own; every run holds ``at_least``
    items while that many remain (so an upper level always shrinks).

    >>> pack([10, 10, 10, 50, 5], 60)
    [range(0, 2), range(2, 3), range(3, 4), range(4, 5)]
    >>> pack([50, 50, 50], 40, at_least=2)
    [range(0, 2), range(2, 3)]
    """
    runs: list[range] = []
    start, used = 0, 0
    for i, length in enumerate(lengths):
        size = length + len(_block(""))
        if i > start and used + size > budget and i - start >= at_least:
            runs.append(range(start, i))
            start, used = i, 0
        used += size
    if start < len(lengths):
        runs.append(range(start, len(lengths)))
    return runs


@dataclass(frozen=True, slots=True)
class _Node:
    group: int
    texts: tuple[str, ...]
    level: int

    def prompt(self, instruction: str) -> str:
        make = leaf_prompt if self.level == 1 else upper_prompt
        return make(instruction, self.texts)


def _budget(settings: ReduceSettings, cfg: MapConfig) -> int:
    frame = len(_UPPER) + len(settings.instruction) + 16
    tokens = input_tokens(cfg, settings.max_input_tokens)
    return max(int(tokens * DEFAULT_CHARS_PER_TOKEN) - frame, 256)


def _nodes(group: int, texts: Sequence[str], level: int, budget: int) -> list[_Node]:
    runs = pack([len(t) for t in texts], budget, at_least=1 if level == 1 else 2)
    return [_Node(group, tuple(texts[i] for i in run), level) for run in runs]


def _groups(values: pl.Series) -> list[list[str]]:
    """A List(String) Series (one list per group) → each group's non-null texts."""
    inner = values.dtype.inner if isinstance(values.dtype, pl.List) else None  # type: ignore[union-attr]
    if not (inner in (pl.String, pl.Null, pl.Categorical) or isinstance(inner, pl.Enum)):
        raise ColumnTypeError(
            f"reduce needs a String column; {values.name!r} holds {inner} (cast it first, "
            f"e.g. pl.col({values.name!r}).cast(pl.String))"
        )
    lists = values.cast(pl.List(pl.String)).to_list()
    return [[t for t in group if t is not None] if group else [] for group in lists]


def _final_config(cfg: MapConfig) -> MapConfig:
    return cfg.replace(include=())


def reduce_groups(groups: list[list[str]], cfg: MapConfig, settings: ReduceSettings) -> pl.DataFrame:
    """One ``result`` and ``status`` per group (``null`` status for a group without text), level by level;
    each level of every group is one engine run (two with ``response_model``: see the module)."""
    final_cfg = _final_config(cfg)
    text_cfg = final_cfg.replace(response_model=None)
    result_dtype = request_spec(final_cfg).result_dtype
    budget = _budget(settings, cfg)
    results: list[object] = [None] * len(groups)
    status = ["null" if not g else "pending" for g in groups]
    spend = Spend(cfg.max_cost)
    level = 1
    nodes = [n for g, texts in enumerate(groups) if texts for n in _nodes(g, texts, 1, budget)]
    depth = _projected_depth(groups, budget)
    while nodes:
        per_group: dict[int, list[int]] = {}
        for i, node in enumerate(nodes):
            per_group.setdefault(node.group, []).append(i)
        final = [len(per_group[n.group]) == 1 for n in nodes]
        prompts = [n.prompt(settings.instruction) for n in nodes]
        answers: list[tuple[object, str]] = [(None, "pending")] * len(nodes)
        label = f"reduce: level {level} of ~{max(depth, level)}"
        kinds = (
            [(final_cfg, True), (text_cfg, False)] if cfg.response_model is not None else [(text_cfg, None)]
        )
        for kind_cfg, is_final in kinds:
            chosen = [i for i in range(len(nodes)) if is_final is None or final[i] == is_final]
            if not chosen:
                continue
            series = pl.Series("prompt", [prompts[i] for i in chosen], dtype=pl.String)
            out = map_stage(series, kind_cfg, label, spend)
            for i, row in zip(chosen, out.iter_rows(), strict=True):
                answers[i] = (row[0], row[1])
        next_texts: dict[int, list[str]] = {}
        for i, node in enumerate(nodes):
            value, state = answers[i]
            g = node.group
            if status[g] == "failed":
                continue
            if state != "done":
                status[g], results[g] = "failed", None
                continue
            if final[i]:
                results[g], status[g] = value, "done"
            else:
                next_texts.setdefault(g, []).append(str(value))
        level += 1
        nodes = [
            n
            for g, texts in next_texts.items()
            if status[g] != "failed"
            for n in _nodes(g, texts, level, budget)
        ]
    return pl.DataFrame(
        {"result": pl.Series(results, dtype=result_dtype), "status": pl.Series(status, dtype=pl.String)}
    )


def _projected_depth(groups: list[list[str]], budget: int, answer_chars: float = 1024.0) -> int:
    """Levels the tallest group is expected to need (answers of ``answer_chars``): for progress labels."""
    fan_in = max(2, int(budget // (answer_chars + len(_block("")))))
    leaves = max((len(pack([len(t) for t in g], budget)) for g in groups if g), default=0)
    if leaves <= 1:
        return leaves
    return 1 + math.ceil(math.log(leaves, fan_in))


def reduce_udf(cfg: MapConfig, settings: ReduceSettings):  # type: ignore[no-untyped-def]
    """The batch function of the expression form: a List(String) Series (one list per group) →
    ``Struct{result, status}`` per group."""

    def udf(values: pl.Series) -> pl.Series:
        out = reduce_groups(_groups(values), cfg, settings)
        return out.to_struct(values.name)

    return udf


def output_dtype(cfg: MapConfig) -> pl.Struct:
    return pl.Struct({"result": request_spec(_final_config(cfg)).result_dtype, "status": pl.String()})


def _check_columns(names: Sequence[str], column: str, by: Sequence[str]) -> None:
    missing = [c for c in (column, *by) if c not in names]
    if missing:
        raise ConfigError(
            f"reduce: no column {', '.join(map(repr, missing))} in the frame (columns: {names})"
        )
    if column in by:
        raise ConfigError(f"reduce: {column!r} is both the text column and a group key")


def reduce_frame(
    frame: FrameT,
    column: str,
    by: str | Sequence[str] | None,
    cfg: MapConfig,
    settings: ReduceSettings,
    *,
    result_name: str = "result",
    status_name: str = "status",
) -> FrameT:
    """The keys of ``by`` (first-seen order) with ``result`` and ``status``; one row without ``by``."""
    keys = [by] if isinstance(by, str) else list(by or [])
    names = frame.columns if isinstance(frame, pl.DataFrame) else frame.collect_schema().names()
    _check_columns(names, column, keys)
    if isinstance(frame, pl.LazyFrame):
        expr = (
            pl.col(column)
            .implode()
            .map_batches(reduce_udf(cfg, settings), return_dtype=output_dtype(cfg), is_elementwise=True)
        )
        grouped = frame.group_by(keys, maintain_order=True).agg(expr) if keys else frame.select(expr)
        return grouped.with_columns(
            pl.col(column).struct.field("result").alias(result_name),
            pl.col(column).struct.field("status").alias(status_name),
        ).drop(column)
    lists = (
        frame.group_by(keys, maintain_order=True).agg(pl.col(column))
        if keys
        else frame.select(pl.col(column).implode())
    )
    out = reduce_groups(_groups(lists.get_column(column)), cfg, settings)
    return lists.drop(column).with_columns(
        out.get_column("result").alias(result_name), out.get_column("status").alias(status_name)
    )


def reduce_estimate(groups: list[list[str]], cfg: MapConfig, settings: ReduceSettings) -> PlanEstimate:
    """What :func:`reduce_groups` would send and cost: the leaves exactly (cached ones are free), the
    levels above projected from the expected answer length (none of them assumed cached)."""
    budget = _budget(settings, cfg)
    leaves = [n for g, texts in enumerate(groups) if texts for n in _nodes(g, texts, 1, budget)]
    prompts = pl.Series("prompt", [n.prompt(settings.instruction) for n in leaves], dtype=pl.String)
    stages: list[tuple[str, Estimate]] = [
        ("level 1 (leaves)", estimate_prompts(prompts, cfg.replace(include=())))
    ]
    answer_chars = stages[0][1].output_tokens / max(len(prompts), 1) * DEFAULT_CHARS_PER_TOKEN or 1024.0
    counts = [sum(1 for n in leaves if n.group == g) for g in range(len(groups))]
    level = 2
    while any(c > 1 for c in counts):
        lengths: list[int] = []
        new_counts = []
        for c in counts:
            if c <= 1:
                new_counts.append(c)
                continue
            runs = pack([int(answer_chars)] * c, budget, at_least=2)
            lengths += [
                len(settings.instruction) + len(_UPPER) + len(r) * int(answer_chars + 16) for r in runs
            ]
            new_counts.append(len(runs))
        counts = new_counts
        chars = pl.Series("chars", lengths, dtype=pl.Int64)
        stages.append((f"level {level} (projected)", estimate_projected(chars, cfg.replace(include=()))))
        level += 1
    return PlanEstimate("reduce", tuple(stages), f"{len(groups):,} groups, {len(leaves):,} leaves")


# --- entry points (the namespaces forward here) ----------------------------------------------------------


@surfaced
@with_options
@with_settings(ReduceSettings)
def llm_reduce(
    expr: pl.Expr | str, instruction: str, model: str | None = None, **options: Unpack[ReduceOptions]
) -> pl.Expr:
    """An aggregating expression: ``Struct{result, status}``, one per group in ``group_by().agg(...)``
    (every group of a level in one engine run), or one for the whole column in ``select``.

    >>> import polars as pl
    >>> from polars_llm import sim
    >>> df = pl.DataFrame({"g": ["a", "a", "b"], "review": ["broken lid", "lid loose", "dim light"]})
    >>> with sim.serve() as url:
    ...     out = df.group_by("g", maintain_order=True).agg(
    ...         llm_reduce("review", "Summarise", "m", base_url=url, api_key="k", cache=None, progress=False)
    ...     ).unnest("review")
    >>> out.rows()
    [('a', 'summary: lid broken loose', 'done'), ('b', 'summary: dim light', 'done')]
    """
    settings, rest = take(ReduceSettings, dict(options), instruction=instruction)
    cfg = resolve_config(model=model, **rest)
    expr = pl.col(expr) if isinstance(expr, str) else expr
    udf = surfaced(reduce_udf(cfg, settings))
    return expr.implode().map_batches(udf, return_dtype=output_dtype(cfg), is_elementwise=True)


@surfaced
@with_options
@with_settings(ReduceSettings)
def llm_reduce_frame(frame: FrameT, column: str, instruction: str, model: str | None = None, *,
                     by: Keys = None, **options: Unpack[ReduceOptions]) -> FrameT:  # fmt: skip
    """``frame`` reduced per group of ``by`` (else as a whole): the keys, ``result`` and ``status``."""
    settings, rest = take(ReduceSettings, dict(options), instruction=instruction)
    return reduce_frame(frame, column, by, resolve_config(model=model, **rest), settings)


@surfaced
@with_options
@with_settings(ReduceSettings)
def estimate_reduce(frame: Frame, column: str, instruction: str, model: str | None = None, *,
                    by: Keys = None, **options: Unpack[ReduceOptions]) -> PlanEstimate:  # fmt: skip
    """What :func:`llm_reduce_frame` would send and cost, without sending.

    >>> import polars as pl
    >>> df = pl.DataFrame({"g": ["a"] * 30, "t": [f"word{i} " * 80 for i in range(30)]})
    >>> est = estimate_reduce(df, "t", "Summarise", "m", by="g", max_input_tokens=1000, api_key="k",
    ...                       cache=None, price=(1.0, 1.0), max_tokens=50)
    >>> [name for name, _ in est.stages], est.stage("level 1").to_send
    (['level 1 (leaves)', 'level 2 (projected)'], 5)
    """
    settings, rest = take(ReduceSettings, dict(options), instruction=instruction)
    cfg = resolve_config(model=model, **rest)
    keys = [by] if isinstance(by, str) else list(by or [])
    lazy = frame.lazy()
    _check_columns(lazy.collect_schema().names(), column, keys)
    grouped = (
        lazy.group_by(keys, maintain_order=True).agg(pl.col(column))
        if keys
        else lazy.select(pl.col(column).implode())
    )
    return reduce_estimate(_groups(grouped.collect().get_column(column)), cfg, settings)
