"""0. The ordinary run: do the controls tax a small cell, or stall one that meets refusals or a budget?

**No tax** — a bare aiohttp loop ÷ ``df.llm.map`` with its defaults (DuckDB cache, progress off), wall
times, each arm in a fresh process, bare and map alternating round by round; no server cap. Cells: 100
prompts at 1 s ± 0.1 s latency (c=64, the "try it on 100 rows" cell), 1,000 at 1 s (c=64), 3,000 at
300 ± 30 ms (c=256), 20,000 at 0 ms (c=64). A 2-row call (``cache=None``): the first in a fresh process
(after ``import polars_llm``) and the median of the next ten.

**No stall** — seconds from the first request until every row is done, against a server that refuses
everything for its first 3 s with no hint (200 prompts, c=16), and one that refuses its first 30 requests
(no hint), then answers (40 prompts, c=8). And a budget stop with varied reservation sizes (400 unique
prompts of varied length, ``price=(1000, 1000)``, ``max_tokens=64``, c=8, ``max_cost=2.0``): it must raise
:class:`~polars_llm.BudgetExceededError`, within a second of the last answer.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from ._common import API_KEY, MODEL, SimProcess, child_main, run_child

__all__ = ["CELLS", "run"]

# name: simulator options, prompts, concurrency, target (bare ÷ map, at least)
CELLS: dict[str, tuple[dict[str, Any], int, int, float]] = {
    "lat1000ms-100-c64": ({"latency": 1.0, "jitter": 0.1}, 100, 64, 0.8),
    "lat1000ms-1000-c64": ({"latency": 1.0}, 1000, 64, 0.9),
    "lat300ms-3000-c256": ({"latency": 0.3, "jitter": 0.03}, 3000, 256, 0.85),
    "lat0-20000-c64": ({}, 20000, 64, 0.5),
}
SMALL_FIRST, SMALL_LATER = 0.4, 0.05  # seconds (plus the latency)
OUTAGE_BOUND, BURST_BOUND, BUDGET_BOUND = 10.0, 20.0, 1.0


def _t(name: str, measured: float | None, target: str, ok: bool | None) -> dict[str, Any]:
    return {"name": name, "measured": measured, "target": target, "met": ok}


def _cells(scale: dict[str, Any], workdir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    rounds, factor = scale.get("ordinary_rounds", 2), scale.get("ordinary_scale", 1.0)
    slower = scale.get("ordinary_latency", 1.0)  # the smoke run shortens latencies (and the outage)
    out: dict[str, Any] = {}
    targets = []
    for name, (sim_options, n, c, bound) in CELLS.items():
        n = max(c, int(n * factor)) if factor < 1 else n
        pairs = []
        sim_options = {k: v * slower for k, v in sim_options.items()}
        with SimProcess(**sim_options) as sim:
            for r in range(rounds):
                walls = {}
                for arm, options in (
                    ("bare_aiohttp", {}),
                    ("map_aiohttp", {"cache": str(workdir / f"start-{name}-{r}.duckdb")}),
                ):
                    params = {"arm": arm, "url": sim.url, "n": n, "concurrency": c,
                              "prefix": f"start-{name}-{arm}-{r}", "options": options}  # fmt: skip
                    res = run_child("_loops", params, sim=sim)
                    walls[arm] = res.get("wall_s") if not res.get("errors") and not res.get("wrong") else None
                if walls["bare_aiohttp"] and walls["map_aiohttp"]:
                    pairs.append((walls["bare_aiohttp"], walls["map_aiohttp"]))
        ratios = [b / m for b, m in pairs]
        ratio = round(statistics.median(ratios), 3) if ratios else None
        out[name] = {"n": n, "concurrency": c, "sim": sim_options, "walls": pairs, "ratios": ratios}
        targets.append(_t(f"{name}: bare loop ÷ .llm.map defaults (median of {len(pairs)} pairs)", ratio,
                          f">= {bound}", ratio is not None and ratio >= bound))  # fmt: skip
    return out, targets


def _small(workdir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    out, targets = {}, []
    for latency in (0.0, 0.2):
        with SimProcess(latency=latency) as sim:
            res = run_child("ordinary", {"case": "small", "url": sim.url})
        out[f"latency {latency:g} s"] = res
        first, later = res.get("first_s"), res.get("later_median_s")
        targets += [
            _t(f"2-row call at {latency:g} s latency: first in a process (s)", first,
               f"<= {SMALL_FIRST} + latency", first is not None and first <= SMALL_FIRST + latency),
            _t(f"2-row call at {latency:g} s latency: later calls, median (s)", later,
               f"<= {SMALL_LATER} + latency", later is not None and later <= SMALL_LATER + latency),
        ]  # fmt: skip
    return out, targets


def _stalls(workdir: Path, outage: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    out, targets = {}, []
    with SimProcess(burst_429=True, burst_seconds=outage, burst_retry_after=0) as sim:
        res = run_child("ordinary", {"case": "done_in", "url": sim.url, "n": 200, "concurrency": 16})
    out["refused for 3 s"] = res
    wall = res.get("wall_s")
    name = f"server refusing everything for {outage:g} s (no hint), 200 prompts c=16: all done after (s)"
    targets.append(_t(name, wall, f"<= {OUTAGE_BOUND}", wall is not None and wall <= OUTAGE_BOUND))
    with SimProcess(burst_requests=30, burst_retry_after=0) as sim:
        res = run_child("ordinary", {"case": "done_in", "url": sim.url, "n": 40, "concurrency": 8})
    out["first 30 refused"] = res
    wall = res.get("wall_s")
    name = "server refusing its first 30 requests (no hint), 40 prompts c=8: all done after (s)"
    targets.append(_t(name, wall, f"<= {BURST_BOUND}", wall is not None and wall <= BURST_BOUND))
    with SimProcess(report_cost=False) as sim:
        params = {"case": "budget", "url": sim.url, "cache": str(workdir / "ordinary-budget.duckdb")}
        res = run_child("ordinary", params)
        res["server_requests"] = sim.stats()["requests"]
    out["budget stop"] = res
    after = res.get("raised_after_last_answer_s")
    targets.append(_t("max_cost with varied reservations: raised this long after the last answer (s)",
                      after, f"<= {BUDGET_BOUND}", after is not None and after <= BUDGET_BOUND))  # fmt: skip
    return out, targets


def run(scale: dict[str, Any], workdir: Path) -> dict[str, Any]:
    cells, t1 = _cells(scale, workdir)
    small, t2 = _small(workdir)
    stalls, t3 = _stalls(workdir, 3.0 * scale.get("ordinary_latency", 1.0))
    return {"cells": cells, "small_calls": small, "stalls": stalls, "targets": t1 + t2 + t3}


# ----------------------------------------------------------------------------------------- child cases


class _AnswerWatcher:
    """When the server last answered: its ``ok`` count, polled every 10 ms from a thread."""

    def __init__(self, url: str) -> None:
        import threading

        self._root, self._done = url[: -len("/v1")], threading.Event()
        self.last, self._ok = time.monotonic(), -1
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        import json
        import urllib.request

        while not self._done.is_set():
            with urllib.request.urlopen(self._root + "/stats?per_prompt=0", timeout=5) as r:
                ok = json.loads(r.read())["ok"]
            if ok != self._ok:
                self._ok, self.last = ok, time.monotonic()
            self._done.wait(0.01)

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.last


def _case(params: dict[str, Any]) -> dict[str, Any]:
    import polars as pl

    import polars_llm  # noqa: F401  (registers .llm)

    url = params["url"]
    base = {"base_url": url, "api_key": API_KEY, "progress": False}
    if params["case"] == "small":
        df = pl.DataFrame({"q": ["hello", "world"]})
        walls = []
        for i in range(11):
            df = pl.DataFrame({"q": [f"hello {i}", f"world {i}"]})
            start = time.perf_counter()
            out = df.llm.map("q", MODEL, cache=None, **base)
            walls.append(time.perf_counter() - start)
            assert out["status"].to_list() == ["done", "done"]
        return {"first_s": round(walls[0], 3), "later_median_s": round(statistics.median(walls[1:]), 4),
                "later_s": [round(w, 4) for w in walls[1:]]}  # fmt: skip
    if params["case"] == "done_in":
        df = pl.DataFrame({"q": [f"stall {i}" for i in range(params["n"])]})
        start = time.perf_counter()
        out = df.llm.map("q", MODEL, cache=None, concurrency=params["concurrency"], **base)
        wall = time.perf_counter() - start
        return {"wall_s": round(wall, 2), "done": int((out["status"] == "done").sum())}
    if params["case"] == "budget":
        from polars_llm import BudgetExceededError

        prompts = [f"review {i}: " + "late " * (i % 37) for i in range(400)]
        df = pl.DataFrame({"q": prompts + prompts[:20]})
        watcher = _AnswerWatcher(url)
        start = time.perf_counter()
        try:
            df.llm.map("q", MODEL, cache=params["cache"], price=(1000, 1000), max_tokens=64, concurrency=8,
                       max_cost=2.0, **base)  # fmt: skip
        except BudgetExceededError as stop:
            raised = time.monotonic()
            last = watcher.stop()
            return {"raised": True, "wall_s": round(time.perf_counter() - start, 2),
                    "raised_after_last_answer_s": round(raised - last, 3), "spent": stop.spent,
                    "rows_left": stop.rows_left}  # fmt: skip
        watcher.stop()
        return {"raised": False, "wall_s": round(time.perf_counter() - start, 2)}
    raise ValueError(params["case"])


if __name__ == "__main__":
    child_main(_case)
