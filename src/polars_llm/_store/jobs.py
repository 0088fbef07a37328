"""A call's jobs as the store registers them (:func:`jobs_frame`) and workers take them (:func:`iter_jobs`).

>>> from polars_llm import MapConfig
>>> frame = jobs_frame(MapConfig(model="m", api_key="k", cache=None), pl.Series(["k1"]), pl.Series(["hi"]))
>>> frame.select("key", "prompt", "model").row(0)
('k1', 'hi', 'm')
>>> list(iter_jobs(pl.Series(["k1", "k2"]), pl.Series(["a", "b"])))
[('k1', 'a'), ('k2', 'b')]
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import polars as pl

from .._config import MapConfig
from .._request import request_spec

__all__ = ["iter_jobs", "jobs_frame"]


def jobs_frame(
    cfg: MapConfig,
    keys: pl.Series,
    prompts: pl.Series,
    *,
    columns: Mapping[str, str | None] | None = None,
    extra: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The rows to register: ``key`` and ``prompt``, plus the request settings as constant columns
    (``columns``, default ``request_spec(cfg).job_columns()``) and per-row ones (``extra``, aligned with
    ``keys``).

    Constants are Polars literals, not ``[value] * n`` Python lists (which cost ~0.5 GB at 1M rows).
    """
    frame = pl.DataFrame({"key": keys, "prompt": prompts}, schema={"key": pl.String, "prompt": pl.String})
    columns = request_spec(cfg).job_columns() if columns is None else columns
    own = set(extra.columns) if extra is not None else set()
    frame = frame.with_columns(
        pl.lit(value, dtype=pl.String).alias(name) for name, value in columns.items() if name not in own
    )
    return frame if extra is None else pl.concat([frame, extra], how="horizontal")


def iter_jobs(
    keys: pl.Series, prompts: pl.Series | Sequence[Any], chunk: int = 8192
) -> Iterator[tuple[str, Any]]:
    """``(key, prompt)`` pairs, turned into Python strings one chunk at a time (not 2 × N up front).

    ``prompts`` may also be a list of per-row payloads (struct rows). Sliced with pyarrow, not Polars:
    after a SIGINT during a Polars query every Polars call raises KeyboardInterrupt until the query ends,
    which must not happen inside a worker task.
    """
    key_arr = keys.to_arrow()
    if not isinstance(prompts, pl.Series):
        for lo in range(0, len(key_arr), chunk):
            yield from zip(key_arr.slice(lo, chunk).to_pylist(), prompts[lo : lo + chunk], strict=True)
        return
    prompt_arr = prompts.to_arrow()
    for lo in range(0, len(key_arr), chunk):
        yield from zip(
            key_arr.slice(lo, chunk).to_pylist(), prompt_arr.slice(lo, chunk).to_pylist(), strict=True
        )
