"""Streamed runs: a frame mapped chunk by chunk, in memory bounded by the chunk, not by the rows.

:func:`map_chunks` takes DataFrames of ``chunk_rows`` rows (from ``collect_batches`` or a file reader),
prepares each one (its distinct prompts and keys), has one :class:`~polars_llm._engine.session.Session` answer
it — one cache connection, transport, pacing and budget for the whole stream, so nothing restarts between
chunks — and yields the chunk with ``result`` and ``status`` (and the ``include`` details) added. Rows
repeated in later chunks are answered from the cache. The progress bar's total grows as chunks arrive.

:func:`stream_frame` turns that into a LazyFrame (a Polars IO source): ``lf.llm.map(...)`` then
``sink_parquet`` runs out of core. Polars pulls the chunks on its pool threads, where no ``SIGINT``
arrives; while a query is aborted every Polars call raises ``KeyboardInterrupt``, so the chunk being
answered is interrupted by probing Polars between waits (:func:`_aborted`): the run stops, flushes what
finished, and the query ends with the interrupt — within about a second, as elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping

import polars as pl

from .._bridge import LoopThread
from .._config.options import INCLUDE_DTYPES, MapConfig
from .._engine.run import RunStats
from .._engine.session import QueryAborted, Session
from .._progress.bar import Progress, reporting
from ..exceptions import BudgetExceededError, PolarsLLMError, remember
from .pipeline import EMPTY_STATE, assemble, prepare, stopped

__all__ = ["map_chunks", "stream_frame"]


def _aborted() -> None:
    """Raise ``KeyboardInterrupt`` if the Polars query this thread works for was interrupted."""
    pl.select(pl.lit(0))


def map_chunks(
    chunks: Iterable[pl.DataFrame],
    source: pl.Expr,
    cfg: MapConfig,
    names: Mapping[str, str],
    *,
    from_polars: bool = False,
    send: bool = True,
    after_stop: Callable[[], pl.LazyFrame] | None = None,
) -> Iterator[pl.DataFrame]:
    """Each chunk with the struct fields ``names`` (``{field: column}``) of its mapped ``source`` added.

    A budget stop (``max_cost``) answers the remaining chunks from the cache only (the rest ``pending``)
    and raises :class:`~polars_llm.BudgetExceededError` once every chunk was yielded; its ``frame`` is
    ``after_stop()`` if given (the same query answered from the cache alone). ``send=False`` sends
    nothing: every chunk is answered from the cache. ``from_polars``: the chunks are pulled by a Polars
    query (see the module docstring).
    """
    stats = RunStats()
    progress = Progress(stats, enabled=cfg.progress)
    session = Session(cfg, stats)
    stop: PolarsLLMError | None = None
    with LoopThread(probe=_aborted if from_polars else None) as loop, reporting(progress):
        ticker = loop.background(progress.run)
        loop.call(session.__aenter__)
        try:
            for chunk in chunks:
                prepared = prepare(chunk.select(source).to_series(), cfg)
                state = EMPTY_STATE
                if len(prepared):
                    try:
                        state = loop.call(
                            session.answer,
                            prepared.keys,
                            prepared.unique,
                            on_start=progress.started,
                            work=prepared.work,
                            send=send and stop is None,
                        )
                    except BudgetExceededError as error:
                        stop, state = error, error.state
                out = assemble(prepared, state, cfg)
                yield chunk.with_columns(out.struct.field(f).alias(c) for f, c in names.items())
        except QueryAborted:
            raise stopped(KeyboardInterrupt(), stats, cfg) from None
        except (KeyboardInterrupt, PolarsLLMError) as error:
            raise stopped(error, stats, cfg) from None
        finally:
            ticker.cancel()
            loop.call(session.__aexit__, None, None, None, probe=False)
    if stop is not None:
        error = stopped(stop, stats, cfg)
        if isinstance(error, BudgetExceededError) and after_stop is not None:
            error.frame = after_stop()
        raise remember(error)


def output_schema(schema: pl.Schema, cfg: MapConfig, names: Mapping[str, str]) -> pl.Schema:
    dtypes = {"result": cfg.request.result_dtype, "status": pl.String(), **INCLUDE_DTYPES}
    return pl.Schema({**schema, **{column: dtypes[field] for field, column in names.items()}})


def stream_frame(
    lf: pl.LazyFrame, source: pl.Expr, cfg: MapConfig, names: Mapping[str, str], *, send: bool = True
) -> pl.LazyFrame:
    """``lf`` with the mapped columns added, as a LazyFrame that maps ``cfg.chunk_rows`` rows at a time.

    Nothing runs until the result is collected or sunk. A filter on input columns that Polars pushes down
    runs before the rows are sent; ``head(n)`` sends only what the first ``n`` rows need. A budget stop's
    ``frame`` is this LazyFrame with ``send=False``: the output as it stands, from the cache, sending
    nothing (collect or sink it like the original).
    """
    schema = lf.collect_schema()
    out_schema = output_schema(schema, cfg, names)

    def as_it_stands() -> pl.LazyFrame:
        return stream_frame(lf, source, cfg, names, send=False)

    def source_fn(
        with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, batch_size: int | None
    ) -> Iterator[pl.DataFrame]:
        upstream = lf
        after: pl.Expr | None = None
        if predicate is not None:
            if set(predicate.meta.root_names()) <= set(schema.names()):
                upstream = upstream.filter(predicate)  # decided by input columns: filter before sending
            else:
                after = predicate
        if n_rows is not None:
            upstream = upstream.head(n_rows)
        chunks = upstream.collect_batches(chunk_size=cfg.chunk_rows, maintain_order=True)
        try:
            rest = map_chunks(
                chunks, source, cfg, names, from_polars=True, send=send, after_stop=as_it_stands
            )
            for out in rest:
                if after is not None:
                    out = out.filter(after)
                yield out.select(with_columns) if with_columns is not None else out
        except KeyboardInterrupt:
            # The query was interrupted: the session stopped and kept what finished. Ending the stream
            # (rather than raising) lets the query end at once; the interrupt itself reaches the caller
            # from the pending SIGINT, once, instead of twice (Polars would raise its own as well).
            return

    return pl.io.plugins.register_io_source(source_fn, schema=out_schema, explain_name="polars_llm map")
