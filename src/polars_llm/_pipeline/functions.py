"""The typed free functions behind the ``llm`` namespaces.

Each resolves its options into one :class:`~polars_llm.MapConfig` (raising ``ConfigError`` before any
request) and hands the column to the pipeline (:mod:`polars_llm._pipeline.pipeline`). Their keyword signatures
are generated from ``MapConfig``'s fields; ``MapOptions`` types them for static checkers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypedDict, TypeVar, Unpack

import orjson
import polars as pl
from pydantic import BaseModel

from .._bridge import surfaced
from .._config import (
    CacheArg,
    MapConfig,
    Mode,
    Secret,
    Transport,
    Worker,
    resolve_config,
    with_embed_options,
    with_options,
)
from .._cost import Estimate
from .._request import request_spec
from ..exceptions import BudgetExceededError, ConfigError
from .chunked import ChunkedRun
from .embed import EmbedSpec, check_options, embed_series
from .modes import mode_of
from .pipeline import amap_series, estimate_series, map_series
from .stream import stream_frame

__all__ = [
    "EXPRESSION_ESTIMATORS",
    "EmbedOptions",
    "MapOptions",
    "chunked_expr",
    "estimate",
    "llm_embed",
    "llm_embed_frame",
    "llm_embed_series",
    "llm_map",
    "llm_map_async",
    "llm_map_frame",
    "llm_map_series",
    "names_models",
    "output_dtype",
]

# How to estimate an expression that is more than a column (a row operator's, which carries its own task
# and options): the operators (a part above this one) register themselves here when imported.
EXPRESSION_ESTIMATORS: list[Callable[[Any, pl.Expr, dict[str, Any]], Estimate | None]] = []

FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)
_TMP = "__polars_llm_struct__"


class EmbedOptions(TypedDict, total=False):
    """Keyword options of the ``embed`` entry points: the options ``map`` and ``embed`` share.

    For type checkers only (``**options: Unpack[EmbedOptions]``); a test keeps it in step with ``MapConfig``
    minus the chat-only options.
    """

    base_url: str | None
    api_key: str | Secret | None
    extra_body: Mapping[str, Any] | None
    batch_size: int | None
    concurrency: int
    rpm_limit: float | None
    tpm_limit: float | None
    max_attempts: int
    timeout: float
    max_backoff: float
    max_wait: float
    cache: CacheArg | Path
    cache_wait: float
    flush_interval: float
    flush_rows: int
    fsync: bool
    max_cost: float | None
    price: tuple[float, float] | Mapping[str, tuple[float, float]] | None
    include: tuple[str, ...] | list[str] | str
    progress: bool
    transport: Transport


class MapOptions(EmbedOptions, total=False):
    """Keyword options shared by every ``map`` entry point: the fields of :class:`MapConfig` but ``model``
    (the shared ones of :class:`EmbedOptions`, plus the chat-only ones below).

    For type checkers only (``**options: Unpack[MapOptions]``); a test keeps it in step with ``MapConfig``.
    """

    system: str | None
    response_model: type[BaseModel] | None
    temperature: float | None
    max_tokens: int | None
    dimensions: int | None
    chunk_rows: int
    worker: Worker | None
    mode: Mode
    wait: bool
    poll_interval: float
    batch_max_requests: int
    batch_max_bytes: int
    pack: int | Literal["auto"]
    on_error: Literal["warn", "raise", "ignore"]


def output_dtype(cfg: MapConfig) -> pl.Struct:
    """``Struct{result, status}``: ``result`` is String, or a Struct shaped like ``response_model``.

    >>> output_dtype(MapConfig(model="m", api_key="k", cache=None))
    Struct({'result': String, 'status': String})
    """
    return request_spec(cfg).output_dtype


def _config(model: str | MapConfig | None, options: Mapping[str, Any]) -> MapConfig:
    if isinstance(model, MapConfig):
        return model.replace(**options) if options else model
    return resolve_config(model=model, model_required=False, **options)  # the input is checked


def names_models(expr: pl.Expr, schema: pl.Schema | None = None) -> bool:
    """Whether ``expr`` may carry a model per row: a ``pl.struct(..., model=...)``, or (given the frame's
    ``schema``) a column holding a struct with a ``model`` field. Then the ``model`` option may be left out.

    >>> names_models(pl.struct(prompt=pl.col("p"), model=pl.col("m"))), names_models(pl.col("p"))
    (True, False)
    """
    try:
        while True:
            tree = orjson.loads(expr.meta.serialize(format="json"))
            if not (isinstance(tree, dict) and "Alias" in tree):
                break
            expr = expr.meta.pop()[0]
        if isinstance(tree, dict) and tree.get("Function", {}).get("function") == "AsStruct":
            return "model" in {e.meta.output_name(raise_if_undetermined=False) for e in expr.meta.pop()}
        if schema is not None and expr.meta.is_column():
            dtype = schema.get(expr.meta.output_name())
            return isinstance(dtype, pl.Struct) and "model" in {f.name for f in dtype.fields}
    except Exception:  # an expression Polars cannot serialise: require the option
        return False
    return False


@surfaced
@with_options
def llm_map_series(
    series: pl.Series, model: str | MapConfig | None = None, **options: Unpack[MapOptions]
) -> pl.Series:
    """Map a String Series: the ``Struct{result, status}`` Series (``model`` may be a ``MapConfig``).

    >>> from polars_llm import sim
    >>> with sim.serve() as url:
    ...     s = llm_map_series(pl.Series("q", ["hi"]), "m", base_url=url, api_key="k", cache=None,
    ...                        progress=False)
    >>> s.struct.field("result").to_list()
    ['m: ih']
    """
    cfg = _config(model, options)
    return map_series(series, cfg)


@surfaced
@with_options
def llm_map(expr: pl.Expr | str, model: str | None = None, **options: Unpack[MapOptions]) -> pl.Expr:
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
    expr = pl.col(expr) if isinstance(expr, str) else expr
    return _map_expr(expr, resolve_config(model=model, model_required=not names_models(expr), **options))


def _map_expr(expr: pl.Expr, cfg: MapConfig) -> pl.Expr:
    return chunked_expr(expr, cfg, request_spec(cfg).output_dtype)


def chunked_expr(
    expr: pl.Expr,
    cfg: MapConfig,
    dtype: pl.DataType,
    finish: Callable[[pl.Series, pl.Series], pl.Series] | None = None,
) -> pl.Expr:
    """``expr`` mapped with ``cfg`` (then ``finish(input, mapped)``, an operator's value, of dtype ``dtype``):
    in a streamed query chunk by chunk through one shared session (:mod:`.chunked`), else with the whole
    column at once. Batch mode always takes the whole column: a batch holds a run's rows."""
    run = ChunkedRun(cfg, finish)

    @surfaced
    def udf(series: pl.Series) -> pl.Series:
        return run.map(series)

    return expr.map_batches(udf, return_dtype=dtype, is_elementwise=run.streams)


def _names(cfg: MapConfig, result_name: str, status_name: str) -> dict[str, str]:
    """Struct field → frame column: result and status (renamed as asked), then the ``include`` details."""
    return {"result": result_name, "status": status_name, **{name: name for name in cfg.include}}


def _check_names(existing: list[str], cfg: MapConfig, result_name: str, status_name: str) -> None:
    clash = [name for name in cfg.include if name in existing or name in (result_name, status_name)]
    if clash:
        raise ConfigError(
            f"include would add column(s) {', '.join(clash)} that the frame already has; rename them first"
        )


def _split(frame: FrameT, names: dict[str, str]) -> FrameT:
    return frame.with_columns(pl.col(_TMP).struct.field(f).alias(c) for f, c in names.items()).drop(_TMP)


@surfaced
@with_options
def llm_map_frame(
    frame: FrameT,
    column: str | pl.Expr,
    model: str | None = None,
    *,
    result_name: str = "result",
    status_name: str = "status",
    **options: Unpack[MapOptions],
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
    source = pl.col(column) if isinstance(column, str) else column
    existing = frame.columns if isinstance(frame, pl.DataFrame) else frame.collect_schema().names()
    if isinstance(frame, pl.DataFrame):
        # Eager: map the evaluated column directly rather than through a Polars UDF, because Polars
        # rebuilds a UDF's exception from its message alone (dropping ``status``, ``path``, ``holder``…).
        cfg = resolve_config(model=model, model_required=False, **options)  # the input is checked
        _check_names(existing, cfg, result_name, status_name)
        names = _names(cfg, result_name, status_name)
        try:
            mapped = map_series(frame.select(source).to_series(), cfg)
        except BudgetExceededError as error:
            if error.frame is not None:  # the frame as it stands, finished rows filled in
                partial = error.frame.select(*names).to_struct(_TMP)
                error.frame = _split(frame.with_columns(partial), names)
            raise
        return _split(frame.with_columns(mapped.alias(_TMP)), names)
    required = model is None and not names_models(source, frame.collect_schema())
    cfg = resolve_config(model=model, model_required=required, **options)
    _check_names(existing, cfg, result_name, status_name)
    names = _names(cfg, result_name, status_name)
    if not mode_of(cfg).streams:  # batch mode: the column at once
        return _split(frame.with_columns(_map_expr(source, cfg).alias(_TMP)), names)
    # streamed, cfg.chunk_rows rows at a time: a LazyFrame over a big scan runs out of core
    return stream_frame(frame, source, cfg, names)


@surfaced
@with_options
async def llm_map_async(
    data: pl.Series | pl.DataFrame,
    column: str | None = None,
    model: str | None = None,
    *,
    result_name: str = "result",
    status_name: str = "status",
    **options: Unpack[MapOptions],
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
    cfg = resolve_config(model=model, model_required=False, **options)  # the input is checked
    if isinstance(data, pl.DataFrame):
        if column is None:
            raise TypeError("llm_map_async(frame, column, ...) needs the prompt column's name")
        _check_names(data.columns, cfg, result_name, status_name)
        mapped = await amap_series(data.get_column(column), cfg)
        return _split(data.with_columns(mapped.alias(_TMP)), _names(cfg, result_name, status_name))
    return await amap_series(data, cfg)


@surfaced
@with_options
def estimate(
    data: pl.Series | pl.DataFrame | pl.LazyFrame,
    column: str | pl.Expr | None = None,
    model: str | None = None,
    **options: Unpack[MapOptions],
) -> Estimate:
    """What ``.llm.map`` with the same options would send and cost — without sending a request.

    Counts rows, unique prompts and what the cache already holds; estimates tokens from earlier answers
    of the model in the cache (no tokenizer download); prices them with ``price=``, else the provider's
    model list (one ``GET /models``, kept in the cache), else says the price is unknown. ``column`` may
    be a row operator's expression (``pl.col("t").llm.classify(...)``, not aliased): its task, options and
    ``pack`` are counted, with ``options`` given here applied over them.

    >>> import polars as pl
    >>> est = estimate(pl.Series("q", ["a", "b", "a", None]), model="m", api_key="k", cache=None,
    ...                price=(1.0, 2.0), max_tokens=10)
    >>> est.rows, est.unique_prompts, est.to_send, est.price_source, est.cost_max is not None
    (4, 2, 2, 'option', True)
    """
    if isinstance(column, pl.Expr):  # a row operator's expression carries its own task and options
        for estimate_expr in EXPRESSION_ESTIMATORS:
            found = estimate_expr(data, column, {"model": model, **options} if model else options)
            if found is not None:
                return found
    cfg = resolve_config(model=model, **options)
    if isinstance(data, pl.Series):
        return estimate_series(data, cfg)
    if column is None:
        raise TypeError("estimate(frame, column, ...) needs the prompt column")
    expr = pl.col(column) if isinstance(column, str) else column
    series = data.lazy().select(expr).collect().to_series()
    return estimate_series(series, cfg)


# --- embeddings ----------------------------------------------------------------------------------------


def _embed_config(model: str | None, dimensions: int | None, options: Mapping[str, Any]) -> MapConfig:
    check_options(options)
    return resolve_config(model=model, dimensions=dimensions, **options)


@surfaced
@with_embed_options
def llm_embed(
    expr: pl.Expr | str,
    model: str | None = None,
    dimensions: int | None = None,
    **options: Unpack[EmbedOptions],
) -> pl.Expr:
    """An expression embedding each row's text: ``Struct{result, status}``, ``result`` a Float32 vector.

    ``result`` is ``Array(Float32, dimensions)`` with ``dimensions``, else ``List(Float32)``. Texts are sent
    ``batch_size`` (default 2048) per ``/embeddings`` request; identical texts once; vectors already in
    the cache are not asked again. Chat-only options (``system``, ``response_model``, ``temperature``,
    ``max_tokens``, ``worker``) raise :class:`~polars_llm.ConfigError`.

    >>> import polars as pl
    >>> from polars_llm import sim
    >>> with sim.serve() as url:
    ...     df = pl.DataFrame({"text": ["a cat", None, "a cat"]}).with_columns(
    ...         llm_embed("text", "m", 4, base_url=url, api_key="k", cache=None, progress=False).alias("e")
    ...     ).unnest("e")
    >>> df["result"].dtype, df["status"].to_list()
    (Array(Float32, shape=(4,)), ['done', 'null', 'done'])
    >>> df["result"][0].to_list() == sim.expected_embedding("m", "a cat", 4)
    True
    """
    cfg = _embed_config(model, dimensions, options)
    spec = EmbedSpec.of(cfg)
    expr = pl.col(expr) if isinstance(expr, str) else expr

    @surfaced
    def udf(series: pl.Series) -> pl.Series:
        return embed_series(series, cfg)

    return expr.map_batches(udf, return_dtype=spec.output_dtype, is_elementwise=False)


@surfaced
@with_embed_options
def llm_embed_series(
    series: pl.Series,
    model: str | None = None,
    dimensions: int | None = None,
    **options: Unpack[EmbedOptions],
) -> pl.Series:
    """Embed a String Series: the ``Struct{result, status}`` Series (see :func:`llm_embed`)."""
    return embed_series(series, _embed_config(model, dimensions, options))


@surfaced
@with_embed_options
def llm_embed_frame(
    frame: FrameT,
    column: str | pl.Expr,
    model: str | None = None,
    dimensions: int | None = None,
    *,
    result_name: str = "result",
    status_name: str = "status",
    **options: Unpack[EmbedOptions],
) -> FrameT:
    """``frame`` with ``result`` (the vectors) and ``status`` columns added (DataFrame or LazyFrame)."""
    cfg = _embed_config(model, dimensions, options)
    names = _names(cfg, result_name, status_name)
    _check_names(frame.collect_schema().names(), cfg, result_name, status_name)
    if isinstance(frame, pl.DataFrame):  # eager: no Polars UDF, so errors keep their attributes
        texts = frame.select(pl.col(column) if isinstance(column, str) else column).to_series()
        return _split(frame.with_columns(embed_series(texts, cfg).alias(_TMP)), names)
    expr = llm_embed(column, model, dimensions, **options).alias(_TMP)
    return _split(frame.with_columns(expr), names)
