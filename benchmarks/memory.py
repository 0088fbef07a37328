"""6. Memory: a large run against the zero-latency simulator → peak RSS and bytes per row.

* **Rows**: ``df.llm.map`` over ``N_small`` and ``N_big`` unique prompts (durable store) in separate
  processes; bytes per row = (peak RSS difference) ÷ (row difference), which cancels the interpreter,
  Polars and DuckDB baseline. ``N_big`` is 1M, or what fits in ``memory_seconds`` at the rate measured in
  section 1 (said so in the results). RSS is sampled every 0.5 s during the big run and lined up with
  the simulator's answered count, so growth during the run is visible.
* **In-flight**: 1 s latency, ``2 × concurrency`` prompts at concurrency 64 and 1024: how much RSS grows
  during the call (highest 50 ms sample minus RSS before it), per extra in-flight request, for
  ``.llm.map`` and for the bare aiohttp loop at the same settings (the HTTP client's own per-connection
  cost, paid by any client).

Peak RSS figures are taken when the ``.llm.map`` call returns (``call_peak_rss_mb``), before the
benchmark's own correctness check builds lists of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import SimProcess, StatsPoller, run_child

__all__ = ["run"]


def _rows_run(sim: SimProcess, n: int, workdir: Path, tag: str, sample: float | None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "arm": "map_aiohttp",
        "url": sim.url,
        "n": n,
        "concurrency": 64,
        "prefix": f"mem-{tag}",
        "options": {"cache": str(workdir / f"memory-{tag}.duckdb")},
    }
    if sample:
        params["sample_rss"] = sample
    return run_child("_loops", params, timeout=1800, sim=sim)


def _growth(rss: list[list[float]], ok: list[tuple[float, float]], n: int) -> list[dict[str, float]]:
    """RSS when 10/25/50/75/100 % of the rows were answered (times line up: both monotonic)."""
    out = []
    for frac in (0.1, 0.25, 0.5, 0.75, 1.0):
        hit = next((t for t, v in ok if v >= frac * n), None)
        if hit is None:
            continue
        before = [r for t, r in rss if t <= hit]
        if before:
            out.append({"answered": frac, "rss_mb": before[-1]})
    return out


def run(scale: dict[str, Any], workdir: Path, rate_hint: float | None = None) -> dict[str, Any]:
    n_small = scale["memory_small"]
    n_big = scale["memory_big"]
    note = f"{n_big:,} rows (fixed by the run's scale)"
    if rate_hint and scale.get("memory_seconds"):
        fits = int(rate_hint * scale["memory_seconds"] / 10_000) * 10_000
        if fits < n_big:
            note = (
                f"{max(fits, n_small * 2):,} rows: the largest that fits in ~{scale['memory_seconds']} s "
                f"at the {rate_hint:.0f} rows/s measured in section 1 (1M would take "
                f"{1_000_000 / rate_hint:.0f} s)"
            )
            n_big = max(fits, n_small * 2)
    with SimProcess() as sim:
        small = _rows_run(sim, n_small, workdir, "small", None)
        sim.reset()
        with StatsPoller(sim, 0.5) as poller:
            big = _rows_run(sim, n_big, workdir, "big", 0.5)
        growth = _growth(big.pop("rss_samples", []), poller.series("ok"), n_big)
    per_row = None
    if "call_peak_rss_mb" in small and "call_peak_rss_mb" in big:
        per_row = round((big["call_peak_rss_mb"] - small["call_peak_rss_mb"]) * 2**20 / (n_big - n_small), 1)

    inflight: dict[str, Any] = {}
    levels = scale["memory_inflight"]
    with SimProcess(latency=scale.get("memory_inflight_latency", 1.0)) as sim:
        for arm in ("map_aiohttp", "bare_aiohttp"):
            for c in levels:
                sim.reset()
                res = run_child(
                    "_loops",
                    {
                        "arm": arm,
                        "url": sim.url,
                        "sample_rss": 0.05,
                        "n": 2 * c,
                        "concurrency": c,
                        "prefix": f"inflight-{arm}-{c}",
                        "options": {"cache": str(workdir / f"inflight-{c}.duckdb")}
                        if arm != "bare_aiohttp"
                        else {},
                    },
                    sim=sim,
                )
                res["server_max_in_flight"] = sim.stats()["max_in_flight"]
                inflight.setdefault(arm, []).append(res)
    per_task: dict[str, float | None] = {}
    for arm, runs in inflight.items():
        for res in runs:
            res.pop("rss_samples", None)
        lo, hi = runs[0], runs[-1]
        if "run_rss_max_mb" in lo and "run_rss_max_mb" in hi:
            grew_lo = lo["run_rss_max_mb"] - lo["rss_before_mb"]
            grew_hi = hi["run_rss_max_mb"] - hi["rss_before_mb"]
            per_task[arm] = round((grew_hi - grew_lo) * 1024 / (hi["concurrency"] - lo["concurrency"]), 1)
    engine_extra = None
    if per_task.get("map_aiohttp") is not None and per_task.get("bare_aiohttp") is not None:
        engine_extra = round(per_task["map_aiohttp"] - per_task["bare_aiohttp"], 1)
    return {
        "params": {"n_small": n_small, "n_big": n_big, "note": note, "inflight_levels": levels},
        "rows": {
            "small": small,
            "big": big,
            "bytes_per_row": per_row,
            "rss_during_big_run": growth,
        },
        "inflight": {
            "runs": inflight,
            "kib_per_in_flight_request": per_task,
            "engine_extra_kib_per_in_flight_request": engine_extra,
        },
        "targets": [
            {
                "name": f"memory: peak RSS of a {n_big:,}-row run (MiB)",
                "measured": big.get("call_peak_rss_mb"),
                "target": "report",
                "met": None if not big.get("errors") and "call_peak_rss_mb" in big else False,
            },
            {"name": "memory: bytes per row", "measured": per_row, "target": "report", "met": None},
            {
                "name": "memory: extra KiB per in-flight request, engine over bare aiohttp",
                "measured": engine_extra,
                "target": "report (bare aiohttp loop's own cost per in-flight request: "
                f"{per_task.get('bare_aiohttp')} KiB)",
                "met": None,
            },
        ],
    }
