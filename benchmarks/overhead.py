"""1. Overhead: zero latency, unique prompts, concurrency 64 — ``.llm.map`` (durable store) vs bare loops.

Arms, each in its own process against one simulator process, interleaved round by round so machine noise
hits all of them alike; the best round of each arm is compared:

* ``bare_aiohttp`` — the ceiling (no persistence, no retries, no pacing);
* ``map_aiohttp`` — ``df.llm.map`` with the DuckDB store on, lean transport (the default);
* ``map_memory`` — the same with ``cache=None`` (the cost of durability is the difference);
* ``map_nojournal`` — ``map_aiohttp`` with the journal switched off (a benchmark-only patch): the
  journal's cost is the difference; ``map_fsync`` — ``map_aiohttp`` with ``fsync=True``;
* ``openai_httpx`` / ``openai_aiohttp`` — a plain openai-SDK loop on its default httpx transport and on
  ``DefaultAioHttpClient`` (no persistence);
* ``map_openai`` — ``df.llm.map(transport="openai")`` with the store on.

The SDK arms are slow, so they run fewer prompts (a rate, not a total, is compared).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import SimProcess, run_child

__all__ = ["run"]

TARGET_RATIO = 0.5
JOURNAL_SHIFT = 0.05  # the journal may move the ratio above by less than this (measured in the same run)


def _arm(
    sim: SimProcess, arm: str, n: int, concurrency: int, tag: str, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    params = {
        "arm": arm,
        "url": sim.url,
        "n": n,
        "concurrency": concurrency,
        "prefix": f"overhead-{arm}-{tag}",
        "options": options or {},
    }
    return run_child("_loops", params, sim=sim)


def _best(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    ok = [r for r in runs if "prompts_per_s" in r and not r.get("errors") and not r.get("wrong")]
    return max(ok, key=lambda r: r["prompts_per_s"]) if ok else None


def journal_append_us(workdir: Path, n: int = 20_000) -> float:
    """Microseconds the event loop spends per answer on the journal (encode + one ``write``), measured
    in this process on ``n`` answers like the simulator's: a noise-free bound on the journal's cost."""
    import time

    from polars_llm._store.journal import Journal
    from polars_llm._store.store import Outcome

    journal = Journal(workdir / "overhead-journal-micro")
    now = time.time()
    outcomes = [
        Outcome(key=f"{i:032x}", status="done", attempts=1, finished_at=now, result="x" * 200, tokens_in=12)
        for i in range(n)
    ]
    start = time.perf_counter()
    for outcome in outcomes:
        journal.append(outcome)
    elapsed = time.perf_counter() - start
    journal.close()
    return round(elapsed / n * 1e6, 2)


def run(scale: dict[str, Any], workdir: Path) -> dict[str, Any]:
    n, n_sdk, rounds, c = scale["overhead_n"], scale["overhead_sdk_n"], scale["overhead_rounds"], 64
    runs: dict[str, list[dict[str, Any]]] = {}
    with SimProcess() as sim:
        for r in range(rounds):
            plan: list[tuple[str, int, dict[str, Any] | None]] = [
                ("bare_aiohttp", n, None),
                ("map_aiohttp", n, {"cache": str(workdir / f"overhead-{r}.duckdb")}),
                ("map_memory", n, {"cache": None}),
            ]
            if scale.get("journal_arms", True):
                plan += [
                    (
                        "map_nojournal",
                        n,
                        {"cache": str(workdir / f"overhead-nj-{r}.duckdb"), "journal": False},
                    ),
                    ("map_fsync", n, {"cache": str(workdir / f"overhead-fsync-{r}.duckdb"), "fsync": True}),
                ]
            if r == 0 or scale.get("sdk_every_round"):
                plan += [
                    ("openai_httpx", n_sdk, None),
                    ("openai_aiohttp", n_sdk, None),
                    (
                        "map_openai",
                        n_sdk,
                        {"cache": str(workdir / f"overhead-openai-{r}.duckdb"), "transport": "openai"},
                    ),
                ]
            for arm, size, options in plan:
                runs.setdefault(arm, []).append(_arm(sim, arm, size, c, str(r), options))
        server = sim.stats()
    best = {arm: _best(rs) for arm, rs in runs.items()}
    rate = {arm: (b["prompts_per_s"] if b else None) for arm, b in best.items()}

    def ratio(a: str, b: str) -> float | None:
        return round(rate[a] / rate[b], 3) if rate.get(a) and rate.get(b) else None

    ratios = {
        "map_aiohttp/bare_aiohttp": ratio("map_aiohttp", "bare_aiohttp"),
        "map_memory/bare_aiohttp": ratio("map_memory", "bare_aiohttp"),
        "map_aiohttp/map_memory": ratio("map_aiohttp", "map_memory"),
        "map_nojournal/bare_aiohttp": ratio("map_nojournal", "bare_aiohttp"),
        "map_fsync/bare_aiohttp": ratio("map_fsync", "bare_aiohttp"),
        "map_fsync/map_aiohttp": ratio("map_fsync", "map_aiohttp"),
        "map_aiohttp/openai_httpx": ratio("map_aiohttp", "openai_httpx"),
        "map_aiohttp/openai_aiohttp": ratio("map_aiohttp", "openai_aiohttp"),
        "map_openai/openai_aiohttp": ratio("map_openai", "openai_aiohttp"),
        "map_openai/bare_aiohttp": ratio("map_openai", "bare_aiohttp"),
        "openai_httpx/bare_aiohttp": ratio("openai_httpx", "bare_aiohttp"),
    }
    measured = ratios["map_aiohttp/bare_aiohttp"]
    without = ratios["map_nojournal/bare_aiohttp"]
    shift = round(without - measured, 3) if without is not None and measured is not None else None
    targets = [
        {
            "name": "map (durable, aiohttp) ÷ bare aiohttp loop",
            "measured": measured,
            "target": f">= {TARGET_RATIO}",
            "met": measured is not None and measured >= TARGET_RATIO,
        }
    ]
    append_us = journal_append_us(workdir)
    # the ratio moves by about ratio × (journal time per answer ÷ the run's time per answer)
    bound = (
        round(measured * append_us * rate["map_aiohttp"] / 1e6, 4)
        if measured and rate.get("map_aiohttp")
        else None
    )
    targets.append(
        {
            "name": f"the journal's cost, bound: ratio × journal µs per answer ({append_us}) ÷ µs per answer",
            "measured": bound,
            "target": f"< {JOURNAL_SHIFT}",
            "met": bound is not None and bound < JOURNAL_SHIFT,
        }
    )
    if "map_nojournal" in runs:  # measured in the same run as map_aiohttp, round by round
        targets.append(
            {
                "name": "the journal's cost: (map without journal − map) ÷ bare aiohttp loop",
                "measured": shift,
                "target": f"< {JOURNAL_SHIFT}",
                "met": shift is not None and shift < JOURNAL_SHIFT,
            }
        )
    return {
        "params": {"n": n, "n_sdk": n_sdk, "rounds": rounds, "concurrency": c, "latency": 0.0},
        "prompts_per_s": rate,
        "ratios": ratios,
        "journal_append_us": append_us,
        "server": {
            "requests": server["requests"],
            "status_counts": server["status_counts"],
            "note": "the simulator's CPU share during each arm is in runs[*].sim_cpu_share",
        },
        "runs": runs,
        "targets": targets,
    }
