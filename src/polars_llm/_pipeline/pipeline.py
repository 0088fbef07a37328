"""The one pipeline behind ``.llm.map``, ``prompt_map`` and ``polars-llm run``: prepare → execute → assemble.

1. :func:`prepare` checks the column and takes the unique non-null prompts in first-seen order, with
   their content keys (from ``request_spec(cfg)``);
2. :func:`run` (or :func:`arun` on the caller's event loop) has the engine make sure every key is
   answered, sending only what the store does not hold as ``done``, beside a progress display;
3. :func:`per_row` joins the answers back onto the rows in their original order, and :func:`assemble`
   turns them into the ``Struct{result, status}`` column.

The seed API and the CLI are adapters over these steps (their shapes and file formats). A run that stops
(interrupt, fatal error) is re-raised with one readable line saying how far it got and where the finished
rows are (:func:`stopped`); the original error stays reachable as ``__context__``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import anyio
import polars as pl

from .._bridge import run_async, run_sync
from .._config import INCLUDE_DTYPES, MapConfig, no_model_error
from .._cost import Estimate, TokenModel, build_estimate, resolve_price
from .._engine import Packer, Work, pack_size, pack_work, packed_chars
from .._progress import Progress, Reporter, RunStats, reporting
from .._request import prepare_struct, request_spec
from .._store import Store
from ..exceptions import (
    BudgetExceededError,
    ColumnTypeError,
    ConfigError,
    EndpointUnreachableError,
    PolarsLLMError,
    ProviderWaitError,
    TransientError,
)
from .modes import mode_of
from .prepared import Prepared

__all__ = [
    "EMPTY_STATE",
    "SPENT",
    "amap_series",
    "arun",
    "assemble",
    "estimate_series",
    "map_series",
    "packed_requests",
    "per_row",
    "prepare",
    "run",
    "stopped",
]

EMPTY_STATE = pl.DataFrame(
    schema={"key": pl.String, "status": pl.String, "result": pl.String, "batch_status": pl.String}
)
_DETAILS = frozenset(INCLUDE_DTYPES) | {"batch_status"}
# Where a caller that runs one column in several calls (:mod:`.chunked`) collects what each run spent.
SPENT: ContextVar[list[float] | None] = ContextVar("polars_llm_spent", default=None)


def _prompts(series: pl.Series) -> pl.Series:
    dtype = series.dtype
    if dtype == pl.String:
        return series
    if dtype in (pl.Null, pl.Categorical) or isinstance(dtype, pl.Enum):
        return series.cast(pl.String)
    raise ColumnTypeError(
        f"the prompt column {series.name!r} has dtype {dtype}; llm.map needs a String column "
        f"(cast it first, e.g. pl.col({series.name!r}).cast(pl.String)) or a struct input "
        "(pl.struct(prompt=..., system=..., images=..., messages=..., model=...))"
    )


def prepare(series: pl.Series, cfg: MapConfig) -> Prepared:
    """Check the column; unique non-null prompts in first-seen order and their content keys.

    Kept as Series (not Python lists) so 1M cached rows cost one temporary list for hashing, not two
    lists held for the whole call plus their copies back into Polars.

    >>> p = prepare(pl.Series("q", ["b", None, "a", "b"]), MapConfig(model="m", api_key="k", cache=None))
    >>> p.unique.to_list(), len(p)
    (['b', 'a'], 2)
    """
    if isinstance(series.dtype, pl.Struct):
        return _prepare_struct(series, cfg)
    rows = _prompts(series)
    if cfg.model is None and cfg.worker is None:
        raise no_model_error()
    unique = rows.drop_nulls().unique(maintain_order=True).rename("prompt")
    keys = pl.Series("key", request_spec(cfg).key_maker().keys(unique.to_list()), dtype=pl.String)
    return Prepared(rows, unique, keys, work=pack_work(cfg, unique))  # pack=N: several rows per request


def _prepare_struct(series: pl.Series, cfg: MapConfig) -> Prepared:
    if cfg.pack != 1:
        raise ConfigError("pack= takes a String prompt column; struct input sends one request per row")
    s = prepare_struct(series, cfg)
    extra = pl.DataFrame(s.columns, schema=dict.fromkeys(s.columns, pl.String))
    work = Work(extra=extra, payloads=s.payloads)
    return Prepared(
        rows=series.struct.field("prompt").cast(pl.String).rename(series.name),
        unique=pl.Series("prompt", s.prompts, dtype=pl.String),
        keys=pl.Series("key", s.keys, dtype=pl.String),
        row_keys=s.row_keys,
        work=work,
    )


def per_row(prepared: Prepared, state: pl.DataFrame) -> pl.DataFrame:
    """``prompt, key, status, result`` (and any other state columns: ``include`` details, ``batch_status``)
    for every input row, in order (``key`` null for a null prompt)."""
    rows = prepared.rows
    answers = state.select("key", "status", "result", *(c for c in state.columns if c in _DETAILS))
    if prepared.row_keys is not None:  # struct input: each row's key is known
        frame = pl.DataFrame([rows.rename("prompt"), prepared.row_keys])
        return frame.join(answers, on="key", how="left", maintain_order="left")
    per_prompt = pl.DataFrame({"prompt": prepared.unique, "key": prepared.keys})
    if rows.null_count() == 0 and len(prepared.unique) == len(rows):
        # every row is its own unique prompt, in the same order: no join on the prompt text needed
        return per_prompt.join(answers, on="key", how="left", maintain_order="left")
    per_prompt = per_prompt.join(answers, on="key", how="left")
    return rows.rename("prompt").to_frame().join(per_prompt, on="prompt", how="left", maintain_order="left")


def assemble(
    prepared: Prepared,
    state: pl.DataFrame,
    cfg: MapConfig,
    results: Callable[[pl.Series], pl.Series] | None = None,
) -> pl.Series:
    """The ``Struct{result, status, <include>}`` column.

    ``status`` is ``done``, ``failed``, ``null`` where the prompt is null, ``submitted`` while the row's
    batch is running (batch mode), or ``pending`` for a row not sent yet (a stopped run: ``max_cost``
    reached; a batch that expired, to be resubmitted). ``results`` turns the stored answers into the
    ``result`` column (default ``request_spec(cfg).results``).
    """
    rows = per_row(prepared, state)
    done = pl.col("status") == "done"
    null = pl.col("prompt").is_null()
    submitted = pl.col("batch_status").is_not_null() if "batch_status" in rows.columns else pl.lit(False)
    details = [
        (pl.lit(None, dtype) if name not in rows.columns else pl.when(~null).then(pl.col(name)))
        .cast(dtype)
        .alias(name)
        for name, dtype in ((name, INCLUDE_DTYPES[name]) for name in cfg.include)
    ]
    frame = rows.select(
        pl.when(done).then(pl.col("result")).alias("result"),
        pl.when(null)
        .then(pl.lit("null"))
        .when(done)
        .then(pl.lit("done"))
        .when(submitted)
        .then(pl.lit("submitted"))
        .when(pl.col("status") == "failed")
        .then(pl.lit("failed"))
        .otherwise(pl.lit("pending"))
        .alias("status"),
        *details,
    )
    result = (results or request_spec(cfg).results)(frame.get_column("result"))
    return frame.with_columns(result).to_struct(prepared.rows.name)


def progress_for(prepared: Prepared, cfg: MapConfig) -> Progress:
    return mode_of(cfg).progress(len(prepared), enabled=cfg.progress and len(prepared) > 0)


async def _execute(prepared: Prepared, cfg: MapConfig, reporter: Reporter) -> pl.DataFrame:
    """The call's mode (online or batch) with the progress display refreshing beside it."""
    mode = mode_of(cfg)
    mode.check(prepared)
    async with anyio.create_task_group() as tg:
        tg.start_soon(reporter.run)
        try:
            return await mode.execute(cfg, prepared, reporter)
        finally:
            tg.cancel_scope.cancel()


def _advice(error: BaseException, cfg: MapConfig) -> str:
    """Where the finished rows are and whether running again helps, for this kind of stop."""
    if cfg.cache_path is None:
        return "with cache=None nothing finished was kept"
    kept = f"finished rows are kept in the cache {cfg.cache_path}"
    if isinstance(error, BudgetExceededError):  # its own message says how to go on (a larger max_cost)
        return kept
    if isinstance(error, KeyboardInterrupt | ProviderWaitError | EndpointUnreachableError | TransientError):
        return f"{kept}; run it again to continue"
    return f"{kept}; fix the cause, then run it again to continue"


def stopped(error: BaseException, stats: RunStats, cfg: MapConfig) -> BaseException:
    """``error`` restated with how far the run got and where its finished rows are (same type).

    The advice fits the stop: "run it again" after an interrupt or a wait, "fix the cause" after a
    rejected key or a wrong URL, nothing more after a budget stop (its message says it), and no promise
    of kept rows with ``cache=None``. A :class:`ConfigError` is not restated: no run started.
    The original is raised ``from None`` over this one, so it stays reachable as ``__context__``.

    >>> err = stopped(KeyboardInterrupt(), RunStats(total=20_000, done=792, failed=1), MapConfig(
    ...     model="m", api_key="k", cache="/tmp/lab.duckdb"))
    >>> print(err)  # doctest: +NORMALIZE_WHITESPACE
    stopped after 793 of 20,000 requests (792 done, 1 failed); finished rows are kept in the cache
    /tmp/lab.duckdb;
    run it again to continue
    """
    if isinstance(error, ConfigError):
        return error
    to_send = stats.total - stats.cached
    note = (
        f"stopped after {stats.finished:,} of {to_send:,} requests "
        f"({stats.done:,} done, {stats.failed:,} failed); {_advice(error, cfg)}"
    )
    note = mode_of(cfg).stopped_note(stats, cfg) or note
    if isinstance(error, KeyboardInterrupt):
        return KeyboardInterrupt(note)
    if isinstance(error, PolarsLLMError):
        restated = copy.copy(error)
        message = f"{getattr(error, 'message', str(error))} — {note}"
        if hasattr(restated, "message"):
            restated.message = message
        restated.args = (message,)
        return restated
    return error


def _restated(error: BaseException, prepared: Prepared, cfg: MapConfig, reporter: Reporter) -> BaseException:
    """What a stopped run raises: ``stopped()``'s restatement; a budget stop carries the output so far."""
    if isinstance(error, BudgetExceededError) and error.state is not None:
        out = assemble(prepared, error.state, cfg).struct.unnest()
        if prepared.rows.name not in out.columns:
            out.insert_column(0, prepared.rows)
        error.frame = out
    if reporter.stats.requests == 0 and not isinstance(error, KeyboardInterrupt | BudgetExceededError):
        return error  # stopped before sending anything (a locked cache…): the error says it all
    return stopped(error, reporter.stats, cfg)


@contextlib.contextmanager
def _restating(
    prepared: Prepared,
    cfg: MapConfig,
    reporter: Reporter,
    stops: tuple[type[BaseException], ...] = (KeyboardInterrupt, PolarsLLMError),
) -> Iterator[None]:
    """Around a run: an error of ``stops`` escaping it is raised as :func:`_restated` (from ``None``).

    Entered before the run crosses into async code, so everything the pipeline does with ``cfg`` is
    done before the bridge is called: the call there is the last step of the sync side.
    """
    try:
        yield
    except stops as exc:
        raise _restated(exc, prepared, cfg, reporter) from None


def run(prepared: Prepared, cfg: MapConfig, reporter: Reporter | None = None) -> pl.DataFrame:
    """Execute synchronously (its own event loop thread, so also from a Jupyter cell); the state frame."""
    if len(prepared) == 0:
        return EMPTY_STATE
    reporter = reporter if reporter is not None else progress_for(prepared, cfg)
    with reporting(reporter), _restating(prepared, cfg, reporter):
        try:
            return run_sync(_execute, prepared, cfg, reporter)
        finally:
            if (spent := SPENT.get()) is not None:
                spent.append(reporter.stats.cost)


async def arun(prepared: Prepared, cfg: MapConfig, reporter: Reporter | None = None) -> pl.DataFrame:
    """:func:`run` on the caller's event loop (top-level ``await`` in a notebook cell)."""
    if len(prepared) == 0:
        return EMPTY_STATE
    reporter = reporter if reporter is not None else progress_for(prepared, cfg)
    with reporting(reporter), _restating(prepared, cfg, reporter, stops=(PolarsLLMError,)):
        return await run_async(_execute, prepared, cfg, reporter)


def estimate_series(series: pl.Series, cfg: MapConfig) -> Estimate:
    """What mapping ``series`` would send and cost: no completion request (maybe one ``GET /models``)."""
    prepared = prepare(series, cfg)
    with Store.open(cfg.cache_path) as store:
        known = store.lookup(prepared.keys.to_frame())
        price = resolve_price(cfg, store)
        history = store.token_history(request_spec(cfg).model)
    done = known.filter(pl.col("status") == "done").get_column("key")
    to_send = prepared.unique.filter(~prepared.keys.is_in(done.implode()))
    tokens = TokenModel.learn(history, max_tokens=cfg.max_tokens, max_output=price.max_output)
    size = pack_size(cfg, to_send) if prepared.work is not None else 1
    to_send_chars, system_chars, tokens = packed_requests(cfg, to_send.str.len_chars(), tokens, size)
    price = mode_of(cfg).price(price)
    return build_estimate(
        model=request_spec(cfg).model,
        rows=len(prepared.rows),
        null_rows=prepared.rows.null_count(),
        unique_prompts=len(prepared),
        to_send_chars=to_send_chars,
        cached=len(prepared) - len(to_send),
        tokens=tokens,
        price=price,
        system_chars=system_chars,
        mode=cfg.mode,
    )


def packed_requests(
    cfg: MapConfig, chars: pl.Series, tokens: TokenModel, size: int
) -> tuple[pl.Series, int, TokenModel]:
    """Requests of rows of ``chars`` characters sent ``size`` per pack (``pack_size``): characters per
    request, the system prompt's characters (once per request) and the token model (an answer per row,
    so ``size`` × per pack). ``size`` 1: the rows as they are.

    >>> from pydantic import create_model
    >>> cfg = MapConfig(model="m", api_key="k", cache=None, response_model=create_model("A", a=(int, ...)))
    >>> tokens = TokenModel.learn((0, 0, 0, 0), max_tokens=10, max_output=None)
    >>> chars, system, packed = packed_requests(cfg, pl.Series([10, 10, 10]), tokens, 2)
    >>> chars.to_list(), system > 0, packed.output_tokens == 2 * tokens.output_tokens
    ([38, 25], True, True)
    """
    if size <= 1:
        return chars, len(cfg.system or ""), tokens
    if tokens.output_tokens_max is not None:  # up to max_tokens per answer, so size× per pack
        tokens = dataclasses.replace(tokens, output_tokens_max=tokens.output_tokens_max * size)
    tokens = dataclasses.replace(tokens, output_tokens=tokens.output_tokens * size)
    return packed_chars(chars, size), len(Packer(request_spec(cfg)).system(size)), tokens


def map_series(series: pl.Series, cfg: MapConfig) -> pl.Series:
    """Map a prompt Series synchronously: the ``Struct{result, status}`` Series."""
    prepared = prepare(series, cfg)
    return assemble(prepared, run(prepared, cfg), cfg)


async def amap_series(series: pl.Series, cfg: MapConfig) -> pl.Series:
    """Map a prompt Series on the caller's event loop."""
    prepared = prepare(series, cfg)
    return assemble(prepared, await arun(prepared, cfg), cfg)
