"""Looking after batches from Python: :func:`batches` lists what a cache remembers, :func:`cancel_batch`
cancels one at the provider. ``polars-llm batches`` is the same from the command line."""

from __future__ import annotations

from typing import Any

import polars as pl

from .._bridge import run_sync, surfaced
from .._config.options import DEFAULT_CACHE, CacheArg, Secret, env_value, resolve_cache
from .._store.batches import batches_frame, get_batch, live_batches, record_status
from .._store.store import Store
from ..exceptions import ConfigError
from .client import BatchClient

__all__ = ["batches", "cancel_batch"]


def _open(cache: CacheArg) -> Store:
    path = resolve_cache(cache)
    if path is None:
        raise ConfigError("cache=None keeps no batches; pass the cache file the batch-mode run used")
    if not path.exists():
        raise ConfigError(f"no cache at {path}: nothing was submitted with it (or pass cache=<its path>)")
    return Store.open(path)


def _key(api_key: str | Secret | None, api_key_env: str) -> str:
    if isinstance(api_key, Secret):
        return api_key.get()
    key = api_key or env_value(api_key_env)
    if not key:
        raise ConfigError(f"no API key: pass api_key=..., or set {api_key_env} in the environment or .env")
    return key


def _client(base_url: str, key: str) -> BatchClient:
    return BatchClient(base_url, key, timeout=60.0, max_attempts=4, max_backoff=10.0)


@surfaced
def batches(
    cache: CacheArg = DEFAULT_CACHE,
    *,
    refresh: bool = False,
    api_key: str | Secret | None = None,
    api_key_env: str = "OPENROUTER_API_KEY",
) -> pl.DataFrame:
    """The batches a cache remembers, newest first: one row per batch submitted with ``mode="batch"``.

    Columns: ``batch_id``, ``live`` (not collected yet: its rows are not sent again), ``status`` (the
    provider's, as last seen), ``requests``, ``completed`` / ``failed`` (the provider's counts),
    ``rows_done`` / ``rows_failed`` / ``rows_requeued`` (what collecting it wrote), ``cost`` (of its rows),
    ``model``, ``base_url``, the times and file ids, and ``message``. With ``refresh=True`` the provider is
    asked first for the status of every live batch (the key from ``api_key`` or ``$OPENROUTER_API_KEY``).
    Collecting the answers is the job of the batch-mode call itself: run it again.

    >>> import tempfile, pathlib, polars as pl, polars_llm
    >>> from polars_llm import sim
    >>> cache = pathlib.Path(tempfile.mkdtemp()) / "c.duckdb"
    >>> with sim.serve() as url:
    ...     out = pl.DataFrame({"q": ["a", "b"]}).llm.map("q", "m", base_url=url, api_key="k", cache=cache,
    ...                                                   mode="batch", wait=False, progress=False)
    >>> polars_llm.batches(cache).select("live", "status", "requests").rows()
    [(True, 'validating', 2)]
    """
    store = _open(cache)
    try:
        if refresh:
            live = live_batches(store)
            if live:
                key = _key(api_key, api_key_env)
                rows = batches_frame(store).filter(pl.col("live"))
                by_url: dict[str, list[str]] = {}
                for batch_id, base_url in rows.select("batch_id", "base_url").iter_rows():
                    by_url.setdefault(base_url, []).append(batch_id)

                async def check() -> list[dict[str, Any]]:
                    infos = []
                    for base_url, ids in by_url.items():
                        async with _client(base_url, key) as client:
                            infos += [await client.retrieve(batch_id) for batch_id in ids]
                    return infos

                for info in run_sync(check):
                    record_status(store, info)
        return batches_frame(store)
    finally:
        store.close()


@surfaced
def cancel_batch(
    batch_id: str,
    *,
    cache: CacheArg = DEFAULT_CACHE,
    api_key: str | Secret | None = None,
    api_key_env: str = "OPENROUTER_API_KEY",
) -> dict[str, Any]:
    """Ask the provider to cancel ``batch_id`` (one of :func:`batches`); returns its row afterwards.

    The provider stops it soon (``cancelling`` → ``cancelled``); answers it already produced are kept. The
    next batch-mode run of the call that submitted it collects those and, as every run does, submits the
    rows still without an answer again: to stop paying for them, do not run that call again (or run it
    online). The base URL is the one the batch was submitted to; the key comes from ``api_key`` or
    ``$OPENROUTER_API_KEY`` (``api_key_env`` names another variable).
    """
    store = _open(cache)
    try:
        row = get_batch(store, batch_id)
        if row is None:
            known = ", ".join(batches_frame(store).get_column("batch_id").head(5).to_list()) or "none"
            raise ConfigError(f"the cache {store.path} has no batch {batch_id!r} (recent: {known})")
        if row["live"]:
            key = _key(api_key, api_key_env)

            async def cancel() -> dict[str, Any]:
                async with _client(str(row["base_url"]), key) as client:
                    return await client.cancel(batch_id)

            record_status(store, run_sync(cancel))
        found = get_batch(store, batch_id)
        assert found is not None
        return found
    finally:
        store.close()
