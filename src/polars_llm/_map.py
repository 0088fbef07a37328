"""The typed free functions behind the ``llm`` namespaces.

A column is mapped in four steps: (1) unique non-null prompts are taken in first-seen order and each
gets a content key; (2) the engine makes sure every key is answered, sending only what the store does
not hold as ``done``; (3) answers are joined back onto the rows in their original order; (4) with a
``response_model`` the JSON answers become a Struct column. The output dtype is known up front, so
``collect_schema()`` never sends a request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypedDict, TypeVar

import anyio
import polars as pl
from pydantic import BaseModel

from ._bridge import run_async, run_sync
from ._config import DEFAULT_CACHE, CacheArg, MapConfig, Secret, Transport, Worker, resolve_config
from ._engine import RunStats, execute
from ._keys import KeyMaker, request_fingerprint
from ._progress import Progress
from .exceptions import ColumnTypeError

__all__ = ["MapOptions", "llm_map", "llm_map_async", "llm_map_frame", "llm_map_series", "output_dtype"]

FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)


class MapOptions(TypedDict, total=False):
    """Keyword options shared by every entry point (see :func:`llm_map`)."""

    system: str | None
    response_model: type[BaseModel] | None
    base_url: str | None
    api_key: str | Secret | None
    temperature: float | None
    max_tokens: int | None
    extra_body: Mapping[str, Any] | None
    concurrency: int
    rpm_limit: float | None
    tpm_limit: float | None
    max_attempts: int
    timeout: float
    cache: CacheArg
    progress: bool
    worker: Worker | None
    transport: Transport
    flush_interval: float
    flush_rows: int
    max_backoff: float


def output_dtype(cfg: MapConfig) -> pl.Struct:
    """``Struct{result, status}``: ``result`` is String, or a Struct shaped like ``response_model``."""
    if cfg.response_model is not None:
        from ._structured import struct_dtype

        result: pl.DataType = struct_dtype(cfg.response_model)
    else:
        result = pl.String()
    return pl.Struct({"result": result, "status": pl.String()})


def _key_maker(cfg: MapConfig) -> KeyMaker:
    schema = None
    if cfg.response_model is not None:
        from ._structured import schema_fingerprint

        schema = schema_fingerprint(cfg.response_model)
    return KeyMaker(
        request_fingerprint(
            base_url=cfg.endpoint, model=cfg.model, system=cfg.system, params=cfg.params(), schema=schema
        )
    )


def _prompts(series: pl.Series) -> pl.Series:
    dtype = series.dtype
    if dtype == pl.String:
        return series
    if dtype in (pl.Null, pl.Categorical) or isinstance(dtype, pl.Enum):
        return series.cast(pl.String)
    raise ColumnTypeError(
        f"the prompt column {series.name!r} has dtype {dtype}; llm.map needs a String column "
        f"(cast it first, e.g. pl.col({series.name!r}).cast(pl.String))"
    )


def _unique(prompts: pl.Series, cfg: MapConfig) -> tuple[pl.Series, pl.Series]:
    """Unique non-null prompts in first-seen order and their content keys, as String Series.

    Kept as Series (not Python lists) so 1M cached rows cost one temporary list for hashing, not two
    lists held for the whole call plus their copies back into Polars.
    """
    unique = prompts.drop_nulls().unique(maintain_order=True).rename("prompt")
    keys = pl.Series("key", _key_maker(cfg).keys(unique.to_list()), dtype=pl.String)
    return unique, keys


def _assemble(
    cfg: MapConfig, prompts: pl.Series, unique: pl.Series, keys: pl.Series, state: pl.DataFrame | None
) -> pl.Series:
    name = prompts.name
    per_prompt = pl.DataFrame({"prompt": unique, "key": keys})
    if state is None:
        state = pl.DataFrame(schema={"key": pl.String, "status": pl.String, "result": pl.String})
    if prompts.null_count() == 0 and len(unique) == len(prompts):
        # every row is its own unique prompt, in the same order: no join on the prompt text needed
        rows = per_prompt.join(
            state.select("key", "status", "result"), on="key", how="left", maintain_order="left"
        )
    else:
        per_prompt = per_prompt.join(state.select("key", "status", "result"), on="key", how="left")
        rows = (
            prompts.rename("prompt")
            .to_frame()
            .join(per_prompt, on="prompt", how="left", maintain_order="left")
        )
    status = rows.select(
        pl.when(pl.col("prompt").is_null())
        .then(pl.lit("null"))
        .when(pl.col("status") == "done")
        .then(pl.lit("done"))
        .otherwise(pl.lit("failed"))
        .alias("status")
    ).to_series()
    texts = rows.select(
        pl.when(pl.col("status") == "done").then(pl.col("result")).alias("result")
    ).to_series()
    if cfg.response_model is not None:
        from ._structured import to_series

        result = to_series(cfg.response_model, "result", texts)
    else:
        result = texts
    return pl.DataFrame({"result": result, "status": status}).to_struct(name)


class Reporter(Protocol):
    """What the engine needs from a progress display (:class:`Progress`, the seed API's reporter)."""

    stats: RunStats

    async def run(self) -> None: ...

    def started(self, stats: RunStats) -> None: ...


async def _run_with_progress(
    cfg: MapConfig, keys: Sequence[str] | pl.Series, unique: Sequence[str] | pl.Series, progress: Reporter
) -> pl.DataFrame:
    """The engine with a progress display refreshing beside it."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(progress.run)
        try:
            return await execute(cfg, keys, unique, stats=progress.stats, on_start=progress.started)
        finally:
            tg.cancel_scope.cancel()


def _prepare(cfg: MapConfig, series: pl.Series) -> tuple[pl.Series, pl.Series, pl.Series, Progress]:
    """Shared by the sync and async paths: prompts, unique prompts, their keys and a progress bar."""
    prompts = _prompts(series)
    unique, keys = _unique(prompts, cfg)
    progress = Progress(RunStats(total=len(keys)), enabled=cfg.progress and len(keys) > 0)
    return prompts, unique, keys, progress


def llm_map_series(series: pl.Series, cfg: MapConfig) -> pl.Series:
    """Map a String Series with a resolved config; returns the ``Struct{result, status}`` Series."""
    prompts, unique, keys, progress = _prepare(cfg, series)
    if len(keys) == 0:
        return _assemble(cfg, prompts, unique, keys, None)
    progress.open()
    try:
        state = run_sync(_run_with_progress, cfg, keys, unique, progress)
    except BaseException:
        progress.close(error=True)
        raise
    progress.close()
    return _assemble(cfg, prompts, unique, keys, state)


def llm_map(
    expr: pl.Expr | str,
    model: str | None = None,
    *,
    system: str | None = None,
    response_model: type[BaseModel] | None = None,
    base_url: str | None = None,
    api_key: str | Secret | None = None,
    temperature: float | None = 0.0,
    max_tokens: int | None = None,
    extra_body: Mapping[str, Any] | None = None,
    concurrency: int = 32,
    rpm_limit: float | None = None,
    tpm_limit: float | None = None,
    max_attempts: int = 8,
    timeout: float = 60.0,
    cache: CacheArg = DEFAULT_CACHE,
    progress: bool = True,
    worker: Worker | None = None,
    transport: Transport = "auto",
    flush_interval: float = 1.0,
    flush_rows: int = 5000,
    max_backoff: float = 60.0,
) -> pl.Expr:
    """An expression that sends each row's prompt to an LLM: ``Struct{result, status}``.

    ``status`` is ``done``, ``failed`` or ``null`` (null prompt, nothing sent). Identical prompts are
    sent once; answers already in the cache are not sent again. Options are validated here, before
    any request (:class:`~polars_llm.ConfigError`).

    >>> import polars as pl, polars_llm
    >>> from polars_llm import sim
    >>> with sim.serve() as url:
    ...     df = pl.DataFrame({"prompt": ["hi", None, "hi"]})
    ...     out = df.with_columns(
    ...         llm_map("prompt", "m", base_url=url, api_key="k", cache=None, progress=False).alias("llm")
    ...     ).unnest("llm")
    >>> out["status"].to_list()
    ['done', 'null', 'done']
    """
    cfg = resolve_config(
        model=model,
        api_key=api_key,
        base_url=base_url,
        cache=cache,
        system=system,
        response_model=response_model,
        temperature=temperature,
        max_tokens=max_tokens,
        extra_body=extra_body,
        concurrency=concurrency,
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        max_attempts=max_attempts,
        timeout=timeout,
        progress=progress,
        worker=worker,
        transport=transport,
        flush_interval=flush_interval,
        flush_rows=flush_rows,
        max_backoff=max_backoff,
    )
    if isinstance(expr, str):
        expr = pl.col(expr)

    def udf(series: pl.Series) -> pl.Series:
        return llm_map_series(series, cfg)

    return expr.map_batches(udf, return_dtype=output_dtype(cfg), is_elementwise=False)


def _split_columns(frame: FrameT, tmp: str, result_name: str, status_name: str) -> FrameT:
    return frame.with_columns(
        pl.col(tmp).struct.field("result").alias(result_name),
        pl.col(tmp).struct.field("status").alias(status_name),
    ).drop(tmp)


def llm_map_frame(
    frame: FrameT,
    column: str | pl.Expr,
    model: str | None = None,
    *,
    result_name: str = "result",
    status_name: str = "status",
    **options: Any,
) -> FrameT:
    """``frame`` with ``result`` and ``status`` columns added (DataFrame or LazyFrame, any engine).

    >>> import polars as pl
    >>> from polars_llm import sim
    >>> with sim.serve() as url:
    ...     out = llm_map_frame(pl.DataFrame({"q": ["a", "b"]}), "q", "m", base_url=url, api_key="k",
    ...                         cache=None, progress=False)
    >>> out.columns
    ['q', 'result', 'status']
    """
    tmp = "__polars_llm_struct__"
    if isinstance(frame, pl.DataFrame):
        # Eager: map the evaluated column directly rather than through a Polars UDF, because Polars
        # rebuilds a UDF's exception from its message alone (dropping ``status``, ``path``, ``holder``…).
        cfg = resolve_config(model=model, **options)
        prompts = frame.select(pl.col(column) if isinstance(column, str) else column).to_series()
        mapped = llm_map_series(prompts, cfg).alias(tmp)
        return _split_columns(frame.with_columns(mapped), tmp, result_name, status_name)
    expr = llm_map(column, model, **options).alias(tmp)
    return _split_columns(frame.with_columns(expr), tmp, result_name, status_name)


async def llm_map_async(
    data: pl.Series | pl.DataFrame,
    column: str | None = None,
    model: str | None = None,
    *,
    result_name: str = "result",
    status_name: str = "status",
    **options: Any,
) -> pl.Series | pl.DataFrame:
    """Awaitable map on the caller's event loop (e.g. top-level ``await`` in a Jupyter cell).

    Given a Series, returns the ``Struct{result, status}`` Series; given a DataFrame and a column name,
    the frame with ``result`` and ``status`` added.

    >>> import asyncio, polars as pl
    >>> from polars_llm import sim
    >>> with sim.serve() as url:
    ...     s = asyncio.run(llm_map_async(pl.Series("q", ["a"]), model="m", base_url=url, api_key="k",
    ...                                   cache=None, progress=False))
    >>> s.struct.field("status").to_list()
    ['done']
    """
    cfg = resolve_config(model=model, **options)
    if isinstance(data, pl.DataFrame):
        if column is None:
            raise TypeError("llm_map_async(frame, column, ...) needs the prompt column's name")
        series = await _amap_series(data.get_column(column), cfg)
        tmp = "__polars_llm_struct__"
        return _split_columns(data.with_columns(series.alias(tmp)), tmp, result_name, status_name)
    return await _amap_series(data, cfg)


async def _amap_series(series: pl.Series, cfg: MapConfig) -> pl.Series:
    prompts, unique, keys, progress = _prepare(cfg, series)
    if len(keys) == 0:
        return _assemble(cfg, prompts, unique, keys, None)
    progress.open()
    try:
        state = await run_async(_run_with_progress, cfg, keys, unique, progress)
    except BaseException:
        progress.close(error=True)
        raise
    progress.close()
    return _assemble(cfg, prompts, unique, keys, state)
