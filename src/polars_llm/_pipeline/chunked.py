"""The expression form in a streamed query: one session for every chunk Polars hands an expression.

``pl.scan_parquet(...).with_columns(pl.col("p").llm.map(...)).sink_parquet(...)``: the expression's
function is elementwise, so Polars' streaming engine calls it once per morsel, on its own worker threads,
instead of once with the whole column: memory is bounded by the chunk, not by the rows. Those calls share
one :class:`ChunkedRun`, hence one :class:`~polars_llm._engine.Session` (cache connection, transport,
learned pace, ``max_cost``), one event loop thread and one progress display for the whole query, as
``lf.llm.map`` has (:mod:`.stream`). Chunks are answered one at a time, each with ``concurrency``
requests in flight.

Polars does not tell a function that the query ended, so the session closes once no chunk came for
:data:`IDLE_CLOSE` seconds (the next chunk is normally waiting already), when a run on the main
thread starts (:func:`close_idle`), or at exit; it opens again for the next query. Several such
expressions in one query (``llm.classify`` and ``llm.filter`` side by side) each keep their own session.

Two other callers get a run of their own per call, as before:

- the main thread (an eager frame, a group, the in-memory engine with the whole column);
- Polars' compute threads, where the in-memory engine calls an elementwise function with one chunk of a
  column each (an eager frame of several chunks). Their calls take turns and each runs on its own thread
  (:func:`~polars_llm._bridge.run_inline`); ``max_cost`` is shared: each is given what the earlier chunks
  of the query left.

A Polars worker thread never sees ``SIGINT``; while the query is aborted every Polars call raises
``KeyboardInterrupt``, so the wait probes Polars (as :mod:`.stream` does) and the chunk being answered
stops, keeping what finished.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final

import polars as pl

from .._bridge import LoopThread, on_polars_pool, polars_aborted, run_sync
from .._config import MapConfig
from .._cost import budget_message
from .._engine import QueryAborted, Session
from .._progress import Progress, RunStats
from ..exceptions import BudgetExceededError, PolarsLLMError, remember
from .modes import mode_of
from .pipeline import EMPTY_STATE, SPENT, assemble, map_series, prepare, stopped
from .prepared import Prepared

__all__ = ["IDLE_CLOSE", "ChunkedRun", "close_idle"]

Finish = Callable[[pl.Series, pl.Series], pl.Series]  # (the input chunk, its mapped Struct) -> the output

IDLE_CLOSE: Final = 0.5
_FRAME_ROWS: Final = 50_000  # a budget stop's frame holds the query's chunks up to this many rows
_OPEN: weakref.WeakSet[ChunkedRun] = weakref.WeakSet()
_OPEN_LOCK = threading.Lock()


@dataclasses.dataclass(eq=False)
class _Chunk:
    rows: pl.Series
    out: pl.DataFrame | None = None  # the rows with their result and status, once answered


def _unnested(rows: pl.Series, mapped: pl.Series) -> pl.DataFrame:
    """The input column, then the mapped fields: the shape of a budget stop's frame."""
    out = mapped.struct.unnest()
    if rows.name not in out.columns:
        out.insert_column(0, rows)
    return out


async def _look_up(cfg: MapConfig, prepared: Prepared) -> pl.DataFrame:
    async with Session(cfg, RunStats()) as session:
        return await session.answer(prepared.keys, prepared.unique, work=prepared.work, send=False)


def close_idle() -> None:
    """Close every shared session of this process that is waiting for a next chunk (a new run starts)."""
    with _OPEN_LOCK:
        runs = list(_OPEN)
    for run in runs:
        run.close(only_idle=True)


@atexit.register
def _close_all() -> None:
    """At exit: close every shared session, waiting for one being closed by its idle timer (a thread
    still closing DuckDB while the interpreter finalizes would abort the process)."""
    with _OPEN_LOCK:
        runs = list(_OPEN)
    for run in runs:
        run.close()


class ChunkedRun:
    """Answers the chunks of one expression in one session (see the module docstring). Thread-safe.

    ``map(series)`` is ``Struct{result, status, …}`` of a chunk, as :func:`~.pipeline.map_series`, or
    ``finish(series, that)`` (an operator's typed value) when ``finish`` is given.

    >>> import polars as pl
    >>> from polars_llm import sim
    >>> with sim.serve() as url:
    ...     run = ChunkedRun(MapConfig(model="m", base_url=url, api_key="k", cache=None, progress=False))
    ...     out = pl.LazyFrame({"q": ["ab", "cd"]}).select(
    ...         pl.col("q").map_batches(run.map, return_dtype=pl.Struct({"result": pl.String,
    ...                                 "status": pl.String}), is_elementwise=True)
    ...     ).collect(engine="streaming")
    ...     run.close()
    >>> out.unnest("q")["result"].to_list()
    ['m: ba', 'm: dc']
    """

    def __init__(self, cfg: MapConfig, finish: Finish | None = None) -> None:
        self.cfg = cfg
        self._finish = finish
        self._spent = 0.0  # USD the chunks of this query run on Polars' compute threads spent so far
        self._stopped: BaseException | None = None  # why this query stopped (its other chunks raise it too)
        # This query's chunks as handed over, each with its output once answered (for a budget stop's
        # frame); None once they hold more than _FRAME_ROWS rows.
        self._chunks: list[_Chunk] | None = []
        self._lock = threading.RLock()
        self._busy = 0  # chunks being answered or waiting for the lock
        self._loop: LoopThread | None = None
        self._session: Session | None = None
        self._progress: Progress | None = None
        self._ticker: Any = None
        self._timer: threading.Timer | None = None

    @property
    def streams(self) -> bool:
        """Whether the mode answers chunk by chunk (online); batch mode takes the whole column."""
        return mode_of(self.cfg).streams

    def map(self, series: pl.Series) -> pl.Series:
        """The mapped chunk (see the class docstring)."""
        if self.streams and threading.current_thread() is not threading.main_thread():
            return self._chunk(series, on_polars_pool())
        close_idle()  # a session left open by an earlier streamed query would hold the cache
        return self._done(series, map_series(series, self.cfg))

    def _chunk(self, series: pl.Series, inline: bool) -> pl.Series:
        chunk = self._enter(series)
        try:
            with self._lock:
                self._cancel_timer()
                if self._stopped is not None:  # an earlier chunk of this query stopped it: so does this one
                    raise copy.copy(self._stopped)
                try:
                    return self._kept(chunk, self._map(series) if not inline else self._map_inline(series))
                except BaseException as error:
                    raise self._stop(error, chunk) from None
        finally:
            self._leave()

    def _enter(self, series: pl.Series) -> _Chunk:
        chunk = _Chunk(series)
        with _OPEN_LOCK:
            self._busy += 1
            if self._chunks is not None:
                held = sum(len(c.rows) for c in self._chunks) + len(series)
                self._chunks = [*self._chunks, chunk] if held <= _FRAME_ROWS else None
        return chunk

    def _leave(self) -> None:
        with _OPEN_LOCK:
            self._busy -= 1
            idle = self._busy == 0
        if idle:
            self._start_timer()

    def _kept(self, chunk: _Chunk, mapped: pl.Series) -> pl.Series:
        if self._chunks is not None:  # kept for a budget stop's frame while the query is small
            chunk.out = _unnested(chunk.rows, mapped)
        return self._done(chunk.rows, mapped)

    def _stop(self, error: BaseException, chunk: _Chunk) -> BaseException:
        """``error`` as this chunk raises it; the query's other chunks raise it too, the session closes."""
        self._stopped = error
        self._close()  # a stopped run does not carry over into the next query
        if isinstance(error, BudgetExceededError):
            self._as_it_stands(error, chunk)
        return error

    def _map_inline(self, series: pl.Series) -> pl.Series:
        with self._spending() as cfg:
            return map_series(series, cfg)

    @contextlib.contextmanager
    def _spending(self) -> Iterator[MapConfig]:
        """The config of a chunk run on its own (``max_cost``: what the earlier chunks left); what it
        spent is added to theirs. Its budget stop says what the query spent of the whole ``max_cost``."""
        cfg, earlier = self.cfg, self._spent
        if cfg.max_cost is not None:
            cfg = cfg.replace(max_cost=max(cfg.max_cost - earlier, 1e-12))
        spent: list[float] = []
        token = SPENT.set(spent)
        try:
            yield cfg
        except BudgetExceededError as stop:
            assert self.cfg.max_cost is not None
            said = budget_message(stop.spent, stop.budget, stop.rows_left)
            stop.spent, stop.budget = stop.spent + earlier, self.cfg.max_cost
            message = str(stop.args[0]) if stop.args else ""
            if message.startswith(said):  # the amounts of the query, not of this chunk's share
                stop.args = (budget_message(stop.spent, stop.budget, stop.rows_left) + message[len(said) :],)
                stop.message = stop.args[0]
            raise
        finally:
            SPENT.reset(token)
            self._spent += sum(spent)

    def _done(self, series: pl.Series, mapped: pl.Series) -> pl.Series:
        return mapped if self._finish is None else self._finish(series, mapped)

    def _map(self, series: pl.Series) -> pl.Series:
        cfg = self.cfg
        prepared = prepare(series, cfg)
        if len(prepared) == 0:
            return assemble(prepared, EMPTY_STATE, cfg)
        loop, session, progress = self._open()
        with self._restating(series, prepared, session):
            state = loop.call(
                session.answer, prepared.keys, prepared.unique, on_start=progress.started, work=prepared.work
            )
        return assemble(prepared, state, cfg)

    @contextlib.contextmanager
    def _restating(self, series: pl.Series, prepared: Prepared, session: Session) -> Iterator[None]:
        """A stop of the shared session restated as the one-shot run restates it (how far it got, where the
        finished rows are); a budget stop carries the chunk as it stands."""
        cfg = self.cfg
        try:
            yield
        except (QueryAborted, KeyboardInterrupt, PolarsLLMError) as error:
            if isinstance(error, BudgetExceededError) and error.state is not None:
                error.frame = _unnested(series, assemble(prepared, error.state, cfg))
            cause = KeyboardInterrupt() if isinstance(error, QueryAborted) else error
            restated = stopped(cause, session.stats, cfg)
            if isinstance(restated, PolarsLLMError):
                remember(restated)
            raise restated from None

    def _as_it_stands(self, stop: BudgetExceededError, current: _Chunk) -> None:
        """Make ``stop.frame`` the output of every chunk this query handed over so far (in that order):
        the answered ones as answered, the stopped one as it stood, the rest from the cache alone. With
        more than 50,000 rows handed over, it stays the stopped chunk's."""
        chunks = self._chunks
        if chunks is None or stop.frame is None or len(chunks) < 2:
            return
        parts = []
        for chunk in chunks:
            if chunk is current:
                parts.append(stop.frame)
            elif chunk.out is not None:
                parts.append(chunk.out)
            else:
                parts.append(_unnested(chunk.rows, self._looked_up(chunk.rows)))
        stop.frame = pl.concat(parts, how="vertical_relaxed")
        stop.rows_left = int((stop.frame.get_column("status") == "pending").sum())

    def _looked_up(self, rows: pl.Series) -> pl.Series:
        """``rows`` mapped from the cache alone (nothing sent), in a run of their own."""
        cfg = self.cfg
        prepared = prepare(rows, cfg)
        if len(prepared) == 0:
            return assemble(prepared, EMPTY_STATE, cfg)
        return assemble(prepared, run_sync(functools.partial(_look_up, cfg, prepared)), cfg)

    def _open(self) -> tuple[LoopThread, Session, Progress]:
        if self._loop is None or self._session is None or self._progress is None:
            stats = RunStats()
            self._progress = Progress(stats, enabled=self.cfg.progress)
            self._progress.open()
            self._loop = LoopThread(probe=polars_aborted).__enter__()
            self._ticker = self._loop.background(self._progress.run)
            self._session = Session(self.cfg, stats)
            self._loop.call(self._session.__aenter__)
            with _OPEN_LOCK:
                _OPEN.add(self)
        return self._loop, self._session, self._progress

    def close(self, *, only_idle: bool = False) -> None:
        """Close the session (the cache file, the transport) and the progress display, if open;
        ``only_idle``: unless a chunk is being answered."""
        if only_idle:
            if not self._lock.acquire(blocking=False):
                return
            try:
                with _OPEN_LOCK:
                    busy = self._busy
                if not busy:
                    self._close()
                    self._spent, self._stopped, self._chunks = 0.0, None, []  # the next query starts afresh
            finally:
                self._lock.release()
            return
        with self._lock:
            self._close()

    def _start_timer(self) -> None:
        timer = threading.Timer(IDLE_CLOSE, self.close, kwargs={"only_idle": True})
        timer.daemon = True
        with self._lock:
            self._cancel_timer()
            self._timer = timer
        timer.start()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close(self) -> None:
        self._cancel_timer()
        loop, session, progress, ticker = self._loop, self._session, self._progress, self._ticker
        self._loop = self._session = self._progress = self._ticker = None
        if loop is None:
            return
        try:
            if ticker is not None:
                ticker.cancel()
            if session is not None:
                loop.call(session.__aexit__, None, None, None, probe=False)
        finally:
            try:
                loop.__exit__(None, None, None)
                if progress is not None:
                    progress.close()
            finally:
                with _OPEN_LOCK:  # only now: an exit waits for a close under way (see _close_all)
                    _OPEN.discard(self)
