"""The ``llm`` namespaces on Expr, Series, DataFrame and LazyFrame: thin forwards to ``_map``."""

from __future__ import annotations

from typing import Generic, TypeVar, Unpack

import polars as pl

from .._bridge import surfaced
from .._config.options import with_embed_options, with_options
from .._conflict import warn_conflicts
from .._cost.budget import Estimate
from .functions import (
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


@pl.api.register_expr_namespace("llm")
class ExprLLM:
    """``pl.col("prompt").llm.map(model=...)`` → ``Struct{result, status}``; ``.llm.embed(...)`` → vectors."""

    def __init__(self, expr: pl.Expr) -> None:
        self._expr = expr

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


@pl.api.register_series_namespace("llm")
class SeriesLLM:
    """``series.llm.map(model=...)`` → a ``Struct{result, status}`` Series; ``amap`` awaits it."""

    def __init__(self, series: pl.Series) -> None:
        self._series = series

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
        """What ``.llm.map`` would send and cost, without sending (see :func:`polars_llm.estimate`)."""
        return estimate(self._frame, column, model, **options)

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
