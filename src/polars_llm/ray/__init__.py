"""Ray Data: map a column of a ``ray.data.Dataset`` on the same engine, with one cache and one set of limits
for the whole cluster (``pip install "polars-llm-map[ray]"``).

>>> import ray, polars_llm.ray                                          # doctest: +SKIP
>>> ds = ray.data.read_parquet("s3://bucket/reviews/")                  # doctest: +SKIP
>>> out = polars_llm.ray.map(ds, "review", "openai/gpt-4o-mini", rpm_limit=3000, cache="labels.duckdb",
...                          workers=8)                                 # doctest: +SKIP
>>> out.write_parquet("s3://bucket/labelled/")                          # doctest: +SKIP

One Ray actor per cache — the *hub* (:mod:`polars_llm.ray._hub`) — owns the DuckDB file and the limits:
workers look keys up and write finished rows through it in batches, and take a permit from it before
every request, so ``concurrency``, ``rpm_limit``, ``tpm_limit``, a provider's ``Retry-After`` pause and
``max_cost`` hold for the cluster, not per worker. Re-running the pipeline sends nothing for rows already
``done``; a worker killed mid-run loses at most its requests in flight and its unwritten rows, which the
rerun sends again. The API key goes from the driver to the hub's memory and from there to the workers; it
is never pickled into the dataset or written anywhere.

Use it when the data already lives in Ray or spans machines. One process already drives thousands of
requests per second — more than a provider key allows — so for data that fits one machine,
``df.llm.map`` / ``lf.llm.map`` are simpler.
"""

from __future__ import annotations

import os
from typing import Any, Final

from .._config import MapConfig, resolve_config
from ._hub import Hub
from ._worker import LLMMap

__all__ = ["LLMMap", "close", "hub", "map", "stats"]

_HUBS: dict[str, Any] = {}  # hub handles owned by this driver, by name (a named actor dies with its handles)
_PREFIX: Final = "polars_llm_hub:"


def _name(cfg: MapConfig) -> str:
    return _PREFIX + (str(cfg.cache_path) if cfg.cache_path is not None else f"memory:{os.getpid()}")


def hub(cfg: MapConfig, options: dict[str, Any]) -> Any:
    """The hub actor of ``cfg``'s cache, started on first use and kept for this driver's life."""
    import ray

    name = _name(cfg)
    handle = _HUBS.get(name)
    if handle is None:
        # Waiting for a permit occupies one of the actor's concurrent calls: allow plenty, so the calls
        # that free permits (release, write) are never stuck behind the ones waiting for them.
        actor = ray.remote(num_cpus=0, max_concurrency=100_000)(Hub)
        handle = actor.options(name=name, get_if_exists=True).remote(options)
        _HUBS[name] = handle
    handle.set_key.remote(cfg.key)  # in the hub's memory only
    return handle


def map(
    ds: Any,
    column: str,
    model: str | None = None,
    *,
    workers: int = 2,
    num_cpus: float = 0.25,
    batch_size: int | None = 1024,
    **options: Any,
) -> Any:
    """``ds`` with ``result`` and ``status`` columns for ``column`` (lazy, like every Ray Data operation).

    ``options`` are those of ``.llm.map`` (validated here, before anything runs). ``workers`` is the
    number of worker actors, each with ``num_cpus`` CPUs, mapping ``batch_size`` rows at a time; the
    requests in flight of all workers together stay under ``concurrency``.
    """
    cfg = resolve_config(model=model, **options)
    shipped = {k: v for k, v in options.items() if k != "api_key"}  # the key goes to the hub's memory only
    shipped.update(model=cfg.model, base_url=cfg.url, cache=cfg.cache_path)
    hub(cfg, shipped)
    kwargs = {"column": column, "hub": _name(cfg), "options": shipped}
    return ds.map_batches(
        LLMMap,
        fn_constructor_kwargs=kwargs,
        batch_format="pyarrow",
        batch_size=batch_size,
        concurrency=workers,
        num_cpus=num_cpus,
    )


def _names(cache: Any) -> list[str]:
    if cache is None:
        return list(_HUBS)
    return [_name(resolve_config(model="-", api_key="-", cache=cache))]


def stats(cache: Any) -> dict[str, Any]:
    """The counters of ``cache``'s hub: ``leases`` (permits handed out, all workers together),
    ``in_flight``, ``max_in_flight``, ``refusals`` (429s reported), ``rows_written``, ``writers`` (workers
    that wrote rows) and ``spent`` (USD, with ``max_cost``)."""
    import ray

    (name,) = _names(cache)
    return dict(ray.get(ray.get_actor(name).stats.remote()))


def close(cache: Any = None) -> None:
    """Stop the hub of ``cache`` (every hub of this driver when ``cache`` is None), releasing the file."""
    import ray

    names = _names(cache)
    for name in names:
        handle = _HUBS.pop(name, None)
        if handle is not None:
            ray.get(handle.close.remote())
            ray.kill(handle)
