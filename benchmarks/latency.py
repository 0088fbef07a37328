"""2. Latency-bound efficiency: 100 ms ± 20 ms per request → achieved ÷ (concurrency ÷ mean latency).

"Achieved" is the steady-state rate at the server (answers between 10 % and 90 % of the run, sampled every
0.1 s): the pool's efficiency once running. The end-to-end rate (rows ÷ wall time of the ``.llm.map`` call)
is reported beside it; it also pays the fixed costs of a run (~0.3–0.5 s: opening the store, importing
aiohttp on first use, the final flush and lookup), which matter only for short runs.

Each concurrency runs ``rounds_per_worker × concurrency`` unique prompts through ``df.llm.map`` (durable
store), in its own process; a bare aiohttp loop runs beside it at the same settings, to show where the
client's CPU (not the engine) becomes the limit. ``client_cpu_share`` is the client process's CPU seconds
per wall second (1.0 = one core busy); with the GIL the event loop cannot use more than about one core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import SimProcess, StatsPoller, run_child, steady_rate

__all__ = ["run"]

LATENCY, JITTER = 0.1, 0.02
TARGET = 0.9


def run(scale: dict[str, Any], workdir: Path) -> dict[str, Any]:
    per_worker = scale["latency_rounds_per_worker"]
    levels: list[int] = scale["latency_concurrency"]
    rows: list[dict[str, Any]] = []
    with SimProcess(latency=LATENCY, jitter=JITTER) as sim:
        for c in levels:
            n = per_worker * c
            ideal = c / LATENCY
            for arm, options in (
                ("map_aiohttp", {"cache": str(workdir / f"latency-{c}.duckdb")}),
                ("bare_aiohttp", {}),
            ):
                sim.reset()
                with StatsPoller(sim, 0.1) as poller:
                    res = run_child(
                        "_loops",
                        {
                            "arm": arm,
                            "url": sim.url,
                            "n": n,
                            "concurrency": c,
                            "prefix": f"lat-{arm}-{c}",
                            "options": options,
                        },
                        sim=sim,
                    )
                stats = sim.stats()
                steady = steady_rate(poller.series("ok"))
                res["ideal_per_s"] = ideal
                res["steady_per_s"] = round(steady, 1) if steady else None
                res["efficiency"] = round(steady / ideal, 3) if steady else None
                res["e2e_efficiency"] = (
                    round(res["prompts_per_s"] / ideal, 3) if "prompts_per_s" in res else None
                )
                res["server_max_in_flight"] = stats["max_in_flight"]
                rows.append(res)
    by = {(r.get("arm"), r.get("concurrency")): r for r in rows}

    def eff(arm: str, c: int, key: str = "efficiency") -> float | None:
        r = by.get((arm, c))
        return r.get(key) if r else None

    targets = [
        {
            "name": "latency-bound efficiency at concurrency 64 (steady state; end-to-end "
            f"{eff('map_aiohttp', 64, 'e2e_efficiency')})",
            "measured": eff("map_aiohttp", 64),
            "target": f">= {TARGET}",
            "met": (eff("map_aiohttp", 64) or 0) >= TARGET,
        }
    ]
    saturation = [
        {
            "concurrency": c,
            "map_efficiency": eff("map_aiohttp", c),
            "map_e2e_efficiency": eff("map_aiohttp", c, "e2e_efficiency"),
            "map_per_s": (by.get(("map_aiohttp", c)) or {}).get("prompts_per_s"),
            "map_client_cpu_share": (by.get(("map_aiohttp", c)) or {}).get("client_cpu_share"),
            "bare_efficiency": eff("bare_aiohttp", c),
            "bare_e2e_efficiency": eff("bare_aiohttp", c, "e2e_efficiency"),
            "bare_client_cpu_share": (by.get(("bare_aiohttp", c)) or {}).get("client_cpu_share"),
        }
        for c in levels
    ]
    for c in levels:
        if c != 64:
            targets.append(
                {
                    "name": f"latency-bound efficiency at concurrency {c} (report; CPU share "
                    f"{saturation[levels.index(c)]['map_client_cpu_share']})",
                    "measured": eff("map_aiohttp", c),
                    "target": "report",
                    "met": None,
                }
            )
    return {
        "params": {"latency": LATENCY, "jitter": JITTER, "rounds_per_worker": per_worker, "levels": levels},
        "saturation": saturation,
        "runs": rows,
        "targets": targets,
    }
