"""``dedup``: a cluster id per row, rows naming the same entity sharing it.

1. the distinct non-null values are embedded (one ``llm.embed`` run, cached);
2. **blocking**: each value's ``k`` nearest other values with cosine similarity ≥ ``threshold`` are its
   candidate pairs (each unordered pair once) — at most ``distinct values × k`` pairs;
3. **verification**: each candidate pair is checked by the LLM through ``llm.filter``'s machinery, as
   ``join``'s pairs are (:func:`polars_llm._operators.join._check_pairs`): the condition is
   ``instruction`` (default "Do these two values refer to the same entity?") over the pair's values
   ``A`` and ``B``, all pairs in one engine run, ``pack=N`` pairs per request if asked;
4. **clusters**: the connected components of the confirmed pairs; ids are ``UInt32``, numbered
   0, 1, … in order of each cluster's first row; equal values share an id without a request; null rows get
   a null id. A pair whose check failed counts as "different" (warned; a rerun asks it again).

>>> import polars as pl, polars_llm
>>> from polars_llm import sim
>>> df = pl.DataFrame({"company": ["Acme Inc.", "Globex", "ACME", None, "Acme Inc."]})
>>> with sim.serve() as url:
...     out = df.with_columns(cluster=pl.col("company").llm.dedup("m", embed_model="e", threshold=0.0,
...                           base_url=url, api_key="k", cache=None, progress=False))
>>> out["cluster"].to_list()
[0, 1, 0, None, 0]
"""

from __future__ import annotations

import warnings
from typing import Unpack

import numpy as np
import polars as pl

from .._bridge import surfaced
from .._config import MapConfig, resolve_config, with_options
from ..exceptions import ColumnTypeError
from .estimate import PlanEstimate
from .filter import condition_request
from .join import _check_pairs, nearest
from .settings import DedupOptions, DedupSettings, take, with_settings
from .stage import Spend, embed_config, embed_stage, estimate_projected, estimate_texts

__all__ = ["components", "dedup_series", "estimate_dedup", "llm_dedup"]


def components(n: int, pairs: list[tuple[int, int]]) -> list[int]:
    """Connected components of ``n`` nodes joined by ``pairs``: a component id per node, numbered in
    order of each component's first node.

    >>> components(5, [(3, 0), (1, 4)])
    [0, 1, 2, 0, 1]
    """
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    ids: dict[int, int] = {}
    return [ids.setdefault(find(x), len(ids)) for x in range(n)]


def _condition(instruction: str) -> str:
    """The filter condition of a pair check: the instruction over the pair's values ``{A}`` and ``{B}``.

    >>> _condition("Same {firm}?")
    'Same {{firm}}? (values: {A}, {B})'
    """
    return instruction.replace("{", "{{").replace("}", "}}") + " (values: {A}, {B})"


def _pair_values(texts: list[str], pairs: list[tuple[int, int]]) -> pl.DataFrame:
    """Each pair's values (``A``, ``B``), each on one line."""
    one_line = [" ".join(t.split()) for t in texts]
    return pl.DataFrame(
        {"A": [one_line[a] for a, _ in pairs], "B": [one_line[b] for _, b in pairs]},
        schema={"A": pl.String, "B": pl.String},
    )


def _candidates(vectors: pl.Series, settings: DedupSettings) -> list[tuple[int, int]]:
    """Unordered pairs of distinct values: each value's k nearest others at or above the threshold."""
    if len(vectors) < 2:
        return []
    i, j = nearest(vectors, vectors, min(settings.k + 1, len(vectors)))
    unit = _unit_rows(vectors)
    sims = np.einsum("ij,ij->i", unit[i], unit[j]) if len(i) else np.empty(0)
    keep = (i != j) & (sims >= settings.threshold)
    return sorted({(int(min(a, b)), int(max(a, b))) for a, b in zip(i[keep], j[keep], strict=True)})


def _unit_rows(vectors: pl.Series) -> np.ndarray:
    filled = vectors.cast(pl.List(pl.Float32)).to_list()
    dims = max((len(v) for v in filled if v is not None), default=1)
    matrix = np.asarray([v if v is not None else [0.0] * dims for v in filled], dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


def _distinct(series: pl.Series) -> pl.Series:
    dtype = series.dtype
    if not (dtype in (pl.String, pl.Null, pl.Categorical) or isinstance(dtype, pl.Enum)):
        raise ColumnTypeError(f"dedup needs a String column; {series.name!r} has dtype {dtype}")
    return series.cast(pl.String).drop_nulls().unique(maintain_order=True)


def dedup_series(series: pl.Series, cfg: MapConfig, settings: DedupSettings) -> pl.Series:
    """A ``UInt32`` cluster id per row of ``series`` (see the module docstring)."""
    values = _distinct(series)
    spend = Spend(cfg.max_cost)
    ecfg = embed_config(cfg, settings.embed_model, settings.embed_dimensions)
    vectors = embed_stage(values, ecfg, "dedup: embedding", spend) if len(values) > 1 else values
    pairs = _candidates(vectors, settings) if len(values) > 1 else []
    condition, checked = _condition(settings.instruction), _pair_values(values.to_list(), pairs)
    same = _check_pairs(checked, condition, cfg, spend, "dedup: checking pairs").to_list() if pairs else []
    failed = sum(v is None for v in same)
    if failed and cfg.on_error == "warn":
        warnings.warn(
            f"dedup: {failed:,} of {len(pairs):,} pair checks failed and count as different; run it again to "
            "retry them",
            stacklevel=3,
        )
    ids = components(len(values), [p for p, ok in zip(pairs, same, strict=True) if ok])
    lookup = pl.DataFrame({"v": values, "id": pl.Series(ids, dtype=pl.UInt32)})
    rows = series.cast(pl.String).rename("v").to_frame()
    return rows.join(lookup, on="v", how="left", maintain_order="left").get_column("id").rename(series.name)


# --- entry points (the namespaces forward here) ----------------------------------------------------------


@surfaced
@with_options
@with_settings(DedupSettings)
def llm_dedup(expr: pl.Expr | str, model: str | None = None, **options: Unpack[DedupOptions]) -> pl.Expr:
    """An expression: the ``UInt32`` cluster id of each row (see the module docstring)."""
    settings, rest = take(DedupSettings, dict(options))
    cfg = resolve_config(model=model, **rest)
    expr = pl.col(expr) if isinstance(expr, str) else expr

    @surfaced
    def udf(series: pl.Series) -> pl.Series:
        return dedup_series(series, cfg, settings)

    return expr.map_batches(udf, return_dtype=pl.UInt32, is_elementwise=False)


@surfaced
@with_options
@with_settings(DedupSettings)
def estimate_dedup(
    series: pl.Series, model: str | None = None, **options: Unpack[DedupOptions]
) -> PlanEstimate:
    """What ``dedup`` would send and cost: the embeddings, then at most ``distinct × k`` pair checks
    (projected: how many pass the threshold is known only from the vectors).

    >>> import polars as pl
    >>> est = estimate_dedup(pl.Series(["a", "b", "a"]), "m", embed_model="e", api_key="k", cache=None)
    >>> est.detail, [name for name, _ in est.stages]
    ('2 distinct values, at most 1 pairs', ['embedding', 'pair checks (at most)'])
    """
    settings, rest = take(DedupSettings, dict(options))
    cfg = resolve_config(model=model, **rest)
    values = _distinct(series)
    ecfg = embed_config(cfg, settings.embed_model, settings.embed_dimensions)
    most = min(len(values) * settings.k, len(values) * (len(values) - 1) // 2)
    avg = int(values.str.len_chars().mean() or 0) * 2 + len("A: \nB: ")  # type: ignore[operator]
    _, _, check_cfg = condition_request(_pair_values([], []), _condition(settings.instruction), cfg)
    checks = estimate_projected(pl.Series([avg] * most, dtype=pl.Int64), check_cfg.replace(include=()))
    stages = (("embedding", estimate_texts(values, ecfg)), ("pair checks (at most)", checks))
    return PlanEstimate("dedup", stages, f"{len(values):,} distinct values, at most {most:,} pairs")
