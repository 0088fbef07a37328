"""8. Embeddings and 9. struct input: ratios of arms measured in one run against one simulator process.

8. Zero latency, ``dimensions`` 256, unique texts sent ``batch_size`` (2048) per request: ``.llm.embed``
   with the DuckDB store ÷ a bare aiohttp loop sending the same batched requests without persistence
   (target ≥ 0.5).
9. Zero latency, c=64, unique prompts: ``.llm.map`` over ``pl.struct(prompt=..., system=...)`` with a
   system prompt per row ÷ ``.llm.map`` over the String column with one ``system=`` of the same length,
   so both send the same bytes and only the input path differs (target ≥ 0.9: within 10 %).

Arms are interleaved round by round and the best round of each is compared, as in section 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import SimProcess, run_child

__all__ = ["run_embeddings", "run_struct"]

EMBED_TARGET = 0.5
STRUCT_TARGET = 0.9


def _best(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in runs if "rows_per_s" in r and not r.get("errors") and not r.get("wrong")]
    return max(ok, key=lambda r: r["rows_per_s"]) if ok else None


def _compare(
    runs: dict[str, list[dict[str, Any]]], num: str, den: str
) -> tuple[dict[str, float | None], float | None]:
    best = {arm: _best(rs) for arm, rs in runs.items()}
    rate = {arm: (b["rows_per_s"] if b else None) for arm, b in best.items()}
    ratio = round(rate[num] / rate[den], 3) if rate.get(num) and rate.get(den) else None
    return rate, ratio


def run_embeddings(scale: dict[str, Any], workdir: Path) -> dict[str, Any]:
    n, rounds, c = scale["embed_n"], scale["embed_rounds"], scale.get("embed_concurrency", 8)
    batch, dims = scale.get("embed_batch", 2048), 256
    runs: dict[str, list[dict[str, Any]]] = {}
    with SimProcess() as sim:
        for r in range(rounds):
            for arm, cache in (("bare_embed", None), ("embed", str(workdir / f"embed-{r}.duckdb"))):
                params = {
                    "arm": arm, "url": sim.url, "n": n, "concurrency": c, "prefix": f"embed-{arm}-{r}",
                    "batch_size": batch, "dimensions": dims, "cache": cache,
                }  # fmt: skip
                runs.setdefault(arm, []).append(run_child("_input_loops", params, sim=sim))
        server = sim.stats()
    rate, ratio = _compare(runs, "embed", "bare_embed")
    return {
        "params": {"n": n, "rounds": rounds, "concurrency": c, "batch_size": batch, "dimensions": dims},
        "rows_per_s": rate,
        "ratios": {"embed/bare_embed": ratio},
        "server": {"requests": server["requests"], "status_counts": server["status_counts"]},
        "runs": runs,
        "targets": [
            {
                "name": f"embed (durable, {dims} dims) ÷ bare aiohttp loop, same batches",
                "measured": ratio,
                "target": f">= {EMBED_TARGET}",
                "met": ratio is not None and ratio >= EMBED_TARGET,
            }
        ],
    }


def run_struct(scale: dict[str, Any], workdir: Path) -> dict[str, Any]:
    n, rounds, c = scale["struct_n"], scale["struct_rounds"], 64
    runs: dict[str, list[dict[str, Any]]] = {}
    with SimProcess() as sim:
        for r in range(rounds):
            for arm in ("plain", "struct"):
                params = {
                    "arm": arm, "url": sim.url, "n": n, "concurrency": c, "prefix": f"struct-{arm}-{r}",
                    "cache": str(workdir / f"struct-{arm}-{r}.duckdb"),
                }  # fmt: skip
                runs.setdefault(arm, []).append(run_child("_input_loops", params, sim=sim))
        server = sim.stats()
    rate, ratio = _compare(runs, "struct", "plain")
    return {
        "params": {"n": n, "rounds": rounds, "concurrency": c, "latency": 0.0},
        "rows_per_s": rate,
        "ratios": {"struct/plain": ratio},
        "server": {"requests": server["requests"], "status_counts": server["status_counts"]},
        "runs": runs,
        "targets": [
            {
                "name": "struct input (per-row system prompt) ÷ String input (same bytes sent)",
                "measured": ratio,
                "target": f">= {STRUCT_TARGET}",
                "met": ratio is not None and ratio >= STRUCT_TARGET,
            }
        ],
    }
