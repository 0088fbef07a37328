"""The seed API, drop-in: ``results = await prompt_map(prompts, ...)`` on the engine of ``.llm.map``.

Users of ``llm_batch_runner`` switch by changing one import::

    from polars_llm import prompt_map                      # was: from llm_batch_runner.main import ...
    from polars_llm import export_jsonl, DB_URL_DEFAULT    # was: from llm_batch_runner.utils import ...

Everything runs on the same engine, store, content keys and progress as ``.llm.map``: identical prompts are
sent once, finished prompts are never sent again (also across ``.llm.map`` and ``prompt_map`` calls that
share a store), and rate limits, retries and errors behave the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, Literal, get_args

import anyio
import polars as pl
from pydantic import BaseModel

from ._bridge import surfaced
from ._compat.progress import SeedReporter
from ._compat.results_db import (
    DB_URL_DEFAULT,
    db_path,
    export_file,
    in_use,
    remove_db_files,
    results_path_for,
    track_active,
    write_results,
)
from ._config.options import MapConfig, Worker, resolve_config
from ._engine.run import RunStats
from ._pipeline.pipeline import arun, per_row, prepare
from .exceptions import ConfigError

__all__ = ["DB_URL_DEFAULT", "SEED_ALIASES", "export_jsonl", "export_parquet", "export_results", "prompt_map"]

OutputShape = Literal["original", "unique"]
ReturnDtype = Literal["list[dict]", "list[str]", "list[tuple[str,str]]", "polars"]
_SHAPES: Final = get_args(OutputShape)
_DTYPES: Final = get_args(ReturnDtype)
SEED_ALIASES: Final = {
    "model_name": "model",
    "openrouter_api_key": "api_key",
    "cache_db_url": "cache",
    "verbose": "progress",
}
"""``prompt_map``'s seed names for options of :class:`~polars_llm.MapConfig`."""
# options prompt_map takes only under their seed name (``api_key`` is accepted under both)
_REJECTED: Final = {option: seed for seed, option in SEED_ALIASES.items() if option != "api_key"} | {
    "prompts": "the first argument"
}


def _check_choices(output_shape: object, return_dtype: object, every: object) -> None:
    if output_shape not in _SHAPES:
        raise ConfigError(
            f"output_shape must be one of {', '.join(map(repr, _SHAPES))}, got {output_shape!r}"
        )
    if return_dtype not in _DTYPES:
        raise ConfigError(
            f"return_dtype must be one of {', '.join(map(repr, _DTYPES))}, got {return_dtype!r}"
        )
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ConfigError(f"progress_update_every must be a positive integer, got {every!r}")


def _as_prompts(prompts: Iterable[str]) -> list[str]:
    if isinstance(prompts, str):
        raise ConfigError("prompts must be a list of strings, not a single string; wrap it: [prompt]")
    if isinstance(prompts, pl.Series):
        if prompts.dtype != pl.String:
            raise ConfigError(f"prompts must be strings; the Series has dtype {prompts.dtype}")
        items = prompts.to_list()
    else:
        try:
            items = list(prompts)
        except TypeError:
            raise ConfigError(f"prompts must be a list of strings, got {type(prompts).__name__}") from None
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise ConfigError(f"prompts must be strings; prompts[{i}] is {type(item).__name__}: {item!r:.60}")
    return items


def _shape(rows: pl.DataFrame, output_shape: OutputShape) -> pl.DataFrame:
    """One row per input (or per unique prompt, at its first index): ``idx, key, prompt, status, result``."""
    rows = rows.with_row_index("idx").with_columns(pl.col("idx").cast(pl.Int64))
    if output_shape == "unique":
        rows = rows.unique(subset="key", keep="first", maintain_order=True)
    done = pl.col("status") == "done"
    return rows.select(
        "idx",
        "key",
        "prompt",
        pl.when(done).then(pl.lit("done")).otherwise(pl.lit("missing")).alias("status"),
        pl.when(done).then(pl.col("result")).alias("result"),
    )


def _returned(rows: pl.DataFrame, return_dtype: ReturnDtype, cfg: MapConfig) -> Any:
    if return_dtype == "list[dict]":
        return rows.to_dicts()
    if return_dtype == "list[str]":
        return rows.get_column("result").to_list()
    if return_dtype == "list[tuple[str,str]]":
        return list(rows.select("prompt", "result").iter_rows())
    return rows.with_columns(cfg.request.results(rows.get_column("result")))


@surfaced
async def prompt_map(
    prompts: Iterable[str],
    worker: Worker | None = None,
    model_name: str | None = None,
    openrouter_api_key: str | None = None,
    response_model: type[BaseModel] | None = None,
    cache_db_url: str | os.PathLike[str] | None = DB_URL_DEFAULT,
    results_db_url: str | os.PathLike[str] | None = None,
    concurrency: int = 32,
    rpm_limit: float | None = None,
    max_attempts: int = 8,
    temperature: float | None = 0.0,
    progress_update_every: int = 200,
    teardown: bool = True,
    teardown_results: bool = False,
    output_shape: OutputShape = "original",
    return_dtype: ReturnDtype = "list[dict]",
    verbose: bool = True,
    **options: Any,
) -> Any:
    """Send every prompt to an LLM (or ``worker``) with durable progress; return results in input order.

    Drop-in for ``llm_batch_runner.main.prompt_map``, running on the engine of ``.llm.map``.

    * model and key: ``model_name`` / ``openrouter_api_key``, else ``MODEL`` / ``OPENROUTER_API_KEY`` from
      the environment or ``./.env``; or a ``worker`` (``async def worker(prompt: str) -> str``) run under
      the same concurrency, rate limit, retries and persistence.
    * ``response_model``: a pydantic model; ``result`` is its JSON text (a Struct for ``"polars"``).
    * ``output_shape="original"``: one row per input, in order, duplicates repeated; ``"unique"``: one row
      per unique prompt in first-occurrence order. Each row has ``idx, key, prompt, status, result``;
      prompts not done have ``status="missing"`` and ``result=None``.
    * ``return_dtype``: ``"list[dict]"``, ``"list[str]"`` (results), ``"list[tuple[str,str]]"``
      (prompt, result) or ``"polars"`` (a DataFrame).
    * ``cache_db_url``: the progress store (a path, ``duckdb:///path`` or a SQLAlchemy-style SQLite URL,
      whose path is used for a DuckDB file); ``teardown=True`` deletes it (WAL included) after a run that
      completed, and keeps it after an error or interrupt so that a rerun resumes.
    * ``results_db_url``: a snapshot of the returned rows (default ``<stem>-results.duckdb`` beside the
      progress store); ``teardown_results=True`` deletes it too.
    * ``options``: further ``.llm.map`` options: ``base_url``, ``api_key``, ``system``, ``tpm_limit``,
      ``timeout``, ``max_tokens``, ``extra_body``, ``transport``, ``max_backoff``, ...

    >>> import asyncio
    >>> async def shout(prompt: str) -> str:
    ...     return prompt.upper()
    >>> rows = asyncio.run(prompt_map(["a", "b", "a"], worker=shout, cache_db_url=None,
    ...                               teardown_results=True, verbose=False))
    >>> [(r["idx"], r["status"], r["result"]) for r in rows]
    [(0, 'done', 'A'), (1, 'done', 'B'), (2, 'done', 'A')]
    """
    _check_choices(output_shape, return_dtype, progress_update_every)
    for name, instead in _REJECTED.items():
        if name in options:
            raise ConfigError(f"prompt_map has no option {name!r}; use {instead}")
    if openrouter_api_key is not None and options.get("api_key") is not None:
        raise ConfigError("pass either openrouter_api_key or api_key, not both")
    items = _as_prompts(prompts)
    cache_path = db_path(cache_db_url)
    results_path = results_path_for(cache_path, results_db_url)
    cfg = resolve_config(
        model=model_name,
        api_key=options.pop("api_key", None) if openrouter_api_key is None else openrouter_api_key,
        base_url=options.pop("base_url", None),
        cache=cache_path,
        worker=worker,
        response_model=response_model,
        concurrency=concurrency,
        rpm_limit=rpm_limit,
        max_attempts=max_attempts,
        temperature=temperature,
        progress=verbose,
        **options,
    )
    prepared = prepare(pl.Series("prompt", items, dtype=pl.String), cfg)
    reporter = SeedReporter(
        RunStats(total=len(prepared)), every=progress_update_every, verbose=verbose, n_prompts=len(items)
    )
    with track_active(cache_path):
        state = await arun(prepared, cfg, reporter)
    # batch mode: rows still in a batch at the provider, or to be resubmitted, need the store kept
    unfinished = state.filter(pl.col("status") == "pending").height if state.height else 0
    if teardown and cache_path is not None and not in_use(cache_path) and not unfinished:
        removed = await anyio.to_thread.run_sync(remove_db_files, cache_path)
        if removed and verbose:
            print(f"Tore down the progress store at: {cache_path}")
    rows = _shape(per_row(prepared, state), output_shape)
    await _save_results(rows, results_path, teardown_results=teardown_results, verbose=verbose)
    return _returned(rows, return_dtype, cfg)


async def _save_results(rows: pl.DataFrame, path: Path, *, teardown_results: bool, verbose: bool) -> None:
    if teardown_results:
        await anyio.to_thread.run_sync(remove_db_files, path)
        return
    try:
        n = await anyio.to_thread.run_sync(write_results, path, rows)
    except Exception as exc:  # the rows are still returned; the snapshot is a convenience (as in the seed)
        import warnings

        warnings.warn(f"could not write the results store {path}: {exc}", RuntimeWarning, stacklevel=3)
        return
    if verbose:
        print(f"Wrote {n} rows to results DB: {path}")


def export_results(
    db: str | os.PathLike[str] = DB_URL_DEFAULT,
    out: str | os.PathLike[str] = "results.jsonl",
    *,
    format: Literal["jsonl", "parquet"] = "jsonl",
    only_done: bool = True,
    verbose: bool = True,
) -> int:
    """Write the results behind ``db`` to ``out`` (synchronous); returns the number of rows.

    ``db`` is the progress store a run used (e.g. :data:`DB_URL_DEFAULT`) or its results store. The results
    store beside a progress store (``<stem>-results.duckdb``, which survives ``teardown=True``) is read
    when it exists: rows ``idx, key, prompt, status, result`` ordered by ``idx``. Otherwise the progress
    store's rows are written (the columns of ``polars-llm export``). ``only_done`` keeps ``done`` rows.

    >>> import asyncio, tempfile, pathlib
    >>> async def echo(p: str) -> str:
    ...     return p
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = asyncio.run(prompt_map(["x"], worker=echo, cache_db_url=d / "runs.duckdb", verbose=False))
    >>> export_results(d / "runs.duckdb", d / "out.jsonl", verbose=False)
    1
    """
    n, source = export_file(db, out, format=format, only_done=only_done)
    if verbose:
        print(f"Exported {n} rows from {source} to {out}")
    return n


async def export_jsonl(
    db: str | os.PathLike[str] = DB_URL_DEFAULT, out: str | os.PathLike[str] = "results.jsonl", **kwargs: Any
) -> int:
    """Awaitable :func:`export_results` to JSON Lines, as in the seed:
    ``asyncio.run(export_jsonl(DB_URL_DEFAULT, out="results.jsonl"))``."""
    return await anyio.to_thread.run_sync(lambda: export_results(db, out, format="jsonl", **kwargs))


async def export_parquet(
    db: str | os.PathLike[str] = DB_URL_DEFAULT,
    out: str | os.PathLike[str] = "results.parquet",
    **kwargs: Any,
) -> int:
    """Awaitable :func:`export_results` to Parquet:
    ``await export_parquet(DB_URL_DEFAULT, "out.parquet")``."""
    return await anyio.to_thread.run_sync(lambda: export_results(db, out, format="parquet", **kwargs))
