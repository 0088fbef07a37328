"""The ``llm`` namespaces on Expr, Series, DataFrame and LazyFrame: thin forwards to the typed free
functions of :mod:`polars_llm._pipeline` (map, embed) and :mod:`polars_llm._operators` (row and set
operators)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar, Unpack

import polars as pl

from ._bridge import surfaced
from ._config import with_embed_options, with_options
from ._conflict import warn_conflicts
from ._cost import Estimate
from ._operators import (
    DedupOptions,
    DedupSettings,
    Fields,
    JoinOptions,
    JoinSettings,
    Keys,
    Labels,
    PlanEstimate,
    ReduceOptions,
    ReduceSettings,
    TopKOptions,
    TopKSettings,
    classify_series,
    estimate_dedup,
    estimate_join,
    estimate_reduce,
    estimate_top_k,
    extract_series,
    filter_series,
    llm_classify,
    llm_dedup,
    llm_extract,
    llm_filter,
    llm_filter_frame,
    llm_join,
    llm_reduce,
    llm_reduce_frame,
    llm_top_k,
    with_settings,
)
from ._pipeline import (
    EmbedOptions,
    MapOptions,
    estimate,
    llm_embed,
    llm_embed_frame,
    llm_embed_series,
    llm_map,
    llm_map_async,
    llm_map_frame,
    llm_map_series,
)

__all__ = ["ExprLLM", "FrameLLM", "LazyFrameLLM", "SeriesLLM"]

FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)

warn_conflicts()  # the other `polars-llm` project, or a foreign `llm` namespace: said, not silently replaced


ColumnT = TypeVar("ColumnT", pl.Expr, pl.Series)


class _RowOperators(Generic[ColumnT]):
    """``classify``, ``filter`` and ``extract`` on an expression or a Series: forwards to the typed free
    functions each namespace names (``_classify``…), over its column (``_column``)."""

    _column: ColumnT
    _classify: Callable[..., ColumnT]
    _filter: Callable[..., ColumnT]
    _extract: Callable[..., ColumnT]

    @surfaced
    @with_options
    def classify(
        self,
        labels: Labels,
        *,
        instructions: str | None = None,
        multi_label: bool = False,
        examples: Sequence[tuple[str, str | Sequence[str]]] | None = None,
        **options: Unpack[MapOptions],
    ) -> ColumnT:
        """``.llm.classify(["good", "bad"], model=...)`` → ``pl.Enum`` (see ``polars_llm.llm_classify``)."""
        return type(self)._classify(
            self._column, labels, instructions=instructions, multi_label=multi_label, examples=examples,
            **options,
        )  # fmt: skip

    @surfaced
    @with_options
    def filter(
        self, condition: str, *, instructions: str | None = None, **options: Unpack[MapOptions]
    ) -> ColumnT:
        """``.llm.filter("mentions late delivery", model=...)`` → Boolean (see ``polars_llm.llm_filter``)."""
        return type(self)._filter(self._column, condition, instructions=instructions, **options)

    @surfaced
    @with_options
    def extract(
        self, fields: Fields, *, instructions: str | None = None, **options: Unpack[MapOptions]
    ) -> ColumnT:
        """``.llm.extract({"city": "the city"}, model=...)`` → Struct (see ``polars_llm.llm_extract``)."""
        return type(self)._extract(self._column, fields, instructions=instructions, **options)


@pl.api.register_expr_namespace("llm")
class ExprLLM(_RowOperators[pl.Expr]):
    """``pl.col("prompt").llm.map(model=...)`` → ``Struct{result, status}``; ``.llm.embed(...)`` → vectors."""

    _classify, _filter, _extract = (
        staticmethod(llm_classify),
        staticmethod(llm_filter),
        staticmethod(llm_extract),
    )

    def __init__(self, expr: pl.Expr) -> None:
        self._expr = self._column = expr

    @surfaced
    @with_options
    def map(self, model: str | None = None, **options: Unpack[MapOptions]) -> pl.Expr:
        return llm_map(self._expr, model, **options)

    @surfaced
    @with_embed_options
    def embed(
        self, model: str | None = None, dimensions: int | None = None, **options: Unpack[EmbedOptions]
    ) -> pl.Expr:
        """``pl.col("text").llm.embed(model, dimensions)`` → ``Struct{result, status}`` of vectors."""
        return llm_embed(self._expr, model, dimensions, **options)

    @surfaced
    @with_options
    @with_settings(ReduceSettings)
    def reduce(self, instruction: str, model: str | None = None, **options: Unpack[ReduceOptions]) -> pl.Expr:
        """One ``Struct{result, status}`` per group in ``group_by().agg`` (else for the whole column)."""
        return llm_reduce(self._expr, instruction, model, **options)

    @surfaced
    @with_options
    @with_settings(DedupSettings)
    def dedup(self, model: str | None = None, **options: Unpack[DedupOptions]) -> pl.Expr:
        """A ``UInt32`` cluster id per row; rows naming the same entity share it (candidate pairs are checked
        by ``filter``'s machinery: ``pack=N`` sends N per request)."""
        return llm_dedup(self._expr, model, **options)


@pl.api.register_series_namespace("llm")
class SeriesLLM(_RowOperators[pl.Series]):
    """``series.llm.map(model=...)`` → a ``Struct{result, status}`` Series; ``amap`` awaits it."""

    _classify = staticmethod(classify_series)
    _filter, _extract = staticmethod(filter_series), staticmethod(extract_series)

    def __init__(self, series: pl.Series) -> None:
        self._series = self._column = series

    @surfaced
    @with_options
    def map(self, model: str | None = None, **options: Unpack[MapOptions]) -> pl.Series:
        return llm_map_series(self._series, model, **options)

    @surfaced
    @with_embed_options
    def embed(
        self, model: str | None = None, dimensions: int | None = None, **options: Unpack[EmbedOptions]
    ) -> pl.Series:
        return llm_embed_series(self._series, model, dimensions, **options)

    @surfaced
    @with_options
    async def amap(self, model: str | None = None, **options: Unpack[MapOptions]) -> pl.Series:
        return await llm_map_async(self._series, model=model, **options)  # type: ignore[return-value]

    @surfaced
    @with_options
    def estimate(self, model: str | None = None, **options: Unpack[MapOptions]) -> Estimate:
        """What ``.llm.map`` would send and cost, without sending (see :func:`polars_llm.estimate`)."""
        return estimate(self._series, model=model, **options)

    @surfaced
    @with_options
    @with_settings(DedupSettings)
    def estimate_dedup(self, model: str | None = None, **options: Unpack[DedupOptions]) -> PlanEstimate:
        """What ``pl.col(...).llm.dedup`` would send and cost over this Series, without sending."""
        return estimate_dedup(self._series, model, **options)


class _FrameLLM(Generic[FrameT]):
    def __init__(self, frame: FrameT) -> None:
        self._frame = frame

    @surfaced
    @with_options
    def map(
        self,
        column: str | pl.Expr,
        model: str | None = None,
        *,
        result_name: str = "result",
        status_name: str = "status",
        **options: Unpack[MapOptions],
    ) -> FrameT:
        return llm_map_frame(
            self._frame, column, model, result_name=result_name, status_name=status_name, **options
        )

    @surfaced
    @with_options
    def estimate(
        self, column: str | pl.Expr, model: str | None = None, **options: Unpack[MapOptions]
    ) -> Estimate:
        """What ``.llm.map`` (or a row operator's expression given as ``column``) would send and cost,
        without sending (see :func:`polars_llm.estimate`)."""
        return estimate(self._frame, column, model, **options)

    @surfaced
    @with_options
    def filter(
        self, condition: str, *, instructions: str | None = None, **options: Unpack[MapOptions]
    ) -> FrameT:
        """``df.llm.filter("{title} and {body} describe the same product", model=...)``: the rows for which
        the condition holds (see ``llm_filter_frame``)."""
        return llm_filter_frame(self._frame, condition, instructions=instructions, **options)

    @surfaced
    @with_embed_options
    def embed(
        self,
        column: str | pl.Expr,
        model: str | None = None,
        dimensions: int | None = None,
        *,
        result_name: str = "result",
        status_name: str = "status",
        **options: Unpack[EmbedOptions],
    ) -> FrameT:
        """``df.llm.embed("text", model, dimensions)`` → ``df`` with ``result`` (vectors) and ``status``."""
        return llm_embed_frame(
            self._frame,
            column,
            model,
            dimensions,
            result_name=result_name,
            status_name=status_name,
            **options,
        )

    @surfaced
    @with_options
    @with_settings(ReduceSettings)
    def reduce(self, column: str, instruction: str, model: str | None = None, *, by: Keys = None,
               **options: Unpack[ReduceOptions]) -> FrameT:  # fmt: skip
        """The keys of ``by`` with ``result`` and ``status``: one answer per group (a tree of requests)."""
        return llm_reduce_frame(self._frame, column, instruction, model, by=by, **options)

    @surfaced
    @with_options
    @with_settings(ReduceSettings)
    def estimate_reduce(self, column: str, instruction: str, model: str | None = None, *, by: Keys = None,
                        **options: Unpack[ReduceOptions]) -> PlanEstimate:  # fmt: skip
        """What :meth:`reduce` would send and cost, without sending."""
        return estimate_reduce(self._frame, column, instruction, model, by=by, **options)

    @surfaced
    @with_options
    @with_settings(JoinSettings)
    def join(self, other: pl.DataFrame | pl.LazyFrame, template: str, model: str | None = None,
             **options: Unpack[JoinOptions]) -> pl.DataFrame:  # fmt: skip
        """The pairs of rows of this frame and ``other`` for which ``template`` holds (candidate pairs are
        checked by ``filter``'s machinery: ``pack=N`` sends N per request)."""
        return llm_join(self._frame, other, template, model, **options)

    @surfaced
    @with_options
    @with_settings(JoinSettings)
    def estimate_join(self, other: pl.DataFrame | pl.LazyFrame, template: str, model: str | None = None,
                      **options: Unpack[JoinOptions]) -> PlanEstimate:  # fmt: skip
        """What :meth:`join` would send and cost (embeddings, candidate pairs), without sending checks."""
        return estimate_join(self._frame, other, template, model, **options)

    @surfaced
    @with_options
    @with_settings(TopKSettings)
    def top_k(self, k: int, instruction: str, model: str | None = None,
              **options: Unpack[TopKOptions]) -> pl.DataFrame:  # fmt: skip
        """The ``k`` rows whose ``column`` best fits ``instruction`` (per group of ``by``), best first, with
        ``rank``."""
        return llm_top_k(self._frame, k, instruction, model, **options)

    @surfaced
    @with_options
    @with_settings(TopKSettings)
    def estimate_top_k(self, k: int, instruction: str, model: str | None = None,
                       **options: Unpack[TopKOptions]) -> PlanEstimate:  # fmt: skip
        """What :meth:`top_k` would send and cost, without sending."""
        return estimate_top_k(self._frame, k, instruction, model, **options)


@pl.api.register_dataframe_namespace("llm")
class FrameLLM(_FrameLLM[pl.DataFrame]):
    """``df.llm.map("prompt", model=...)`` → ``df`` with ``result`` and ``status`` columns."""

    @surfaced
    @with_options
    async def amap(
        self,
        column: str,
        model: str | None = None,
        *,
        result_name: str = "result",
        status_name: str = "status",
        **options: Unpack[MapOptions],
    ) -> pl.DataFrame:
        return await llm_map_async(  # type: ignore[return-value]
            self._frame, column, model, result_name=result_name, status_name=status_name, **options
        )


@pl.api.register_lazyframe_namespace("llm")
class LazyFrameLLM(_FrameLLM[pl.LazyFrame]):
    """``lf.llm.map("prompt", model=...)`` → a LazyFrame; nothing is sent until it is collected."""
