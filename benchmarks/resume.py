"""4. Resume waste: SIGKILL a run at some point, run it again, count every request the server saw.

A child process maps ``N`` unique prompts into a DuckDB cache; the parent polls the simulator's
``/stats`` and SIGKILLs the child once a given share of the prompts is answered; a second child runs the
same map to completion. Waste = total requests ÷ unique prompts. Every answer the killed run received is
in its journal beside the cache (see ``docs/store-durability.md``) and is folded in when the rerun opens
the store, so only the requests in flight at the kill are sent again: the target is
``1 + concurrency ÷ N + 0.005``. The rerun's result is checked row by row against the simulator's
deterministic answers.

Cases: the eager path (``df.llm.map``, concurrency 32, the default) at 0 ms and 20 ms latency, and the
streamed out-of-core path (``pl.scan_parquet(...).llm.map(...).sink_parquet(...)``, concurrency 64, the
prompts of ``benchmarks/outofcore.py``) at 0 ms and 20 ms; each killed at 25 %, 50 % and 75 % answered.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ._common import ROOT, SimProcess, run_child
from .outofcore import make_input

__all__ = ["run"]

CONCURRENCY = 32  # the library's default
STREAMED_CONCURRENCY = 64  # benchmarks/outofcore.py's
LATENCIES = (0.0, 0.02)
KILL_AT = (0.25, 0.5, 0.75)
SLACK = 0.005


def _kill_at(sim: SimProcess, module: str, params: dict[str, Any], answered: int) -> dict[str, Any]:
    args = [sys.executable, "-m", f"benchmarks.{module}", json.dumps(params)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ok = 0
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            ok = sim.stats()["ok"]
            if ok >= answered or proc.poll() is not None:
                break
            time.sleep(0.002)
        killed = proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    time.sleep(0.2)  # let the server finish the requests the dead client left behind
    return {"killed": killed, "ok_at_kill": ok, "requests_after_kill": sim.stats()["requests"]}


def _one(path: str, latency: float, share: float, n: int, workdir: Path) -> dict[str, Any]:
    name = f"{path}-{round(latency * 1000)}ms-{round(share * 100)}pct"
    cache = workdir / f"resume-{name}.duckdb"
    with SimProcess(latency=latency) as sim:
        if path == "eager":
            module, concurrency, unique = "_loops", CONCURRENCY, n
            params: dict[str, Any] = {
                "arm": "map_aiohttp",
                "url": sim.url,
                "n": n,
                "concurrency": concurrency,
                "prefix": f"resume-{name}",
                "options": {"cache": str(cache)},
            }
        else:
            module, concurrency, unique = "outofcore", STREAMED_CONCURRENCY, n // 2
            source = workdir / f"resume-input-{n}.parquet"
            make_input(source, n)  # n rows, n // 2 distinct prompts
            params = {
                "arm": "lazy",
                "url": sim.url,
                "n": n,
                "input": str(source),
                "output": str(workdir / f"resume-{name}.parquet"),
                "cache": str(cache),
            }
        first = _kill_at(sim, module, params, round(unique * share))
        second = run_child(module, params, sim=sim)
        stats = sim.stats()
    total = stats["requests"]
    if path == "eager":
        correct = second.get("errors") == 0 and second.get("wrong") == 0 and second.get("n") == n
    else:
        correct = (
            bool(second.get("complete"))
            and second.get("done") == n
            and second.get("wrong_in_first_1000") == 0
        )
    bound = 1 + concurrency / unique + SLACK
    ratio = round(total / unique, 4)
    return {
        "path": path,
        "latency": latency,
        "kill_at_share": share,
        "unique_prompts": unique,
        "concurrency": concurrency,
        "first_run": first,
        "rerun": {k: v for k, v in second.items() if k not in ("answers", "runs")},
        "rerun_requests": total - first["requests_after_kill"],
        "total_requests": total,
        "requests_per_unique_prompt": ratio,
        "resent_rows": total - unique,
        "bound": round(bound, 4),
        "complete_and_correct": correct,
        "met": ratio <= bound and correct and first["killed"],
    }


def run(scale: dict[str, Any], workdir: Path) -> dict[str, Any]:
    n = scale["resume_n"]
    cases = [
        _one(path, latency, share, n if path == "eager" else 2 * n, workdir)
        for path in ("eager", "streamed")
        for latency in LATENCIES
        for share in scale.get("resume_kill_at", KILL_AT)
    ]
    targets = []
    for path in ("eager", "streamed"):
        for latency in LATENCIES:
            mine = [c for c in cases if c["path"] == path and c["latency"] == latency]
            worst = max(mine, key=lambda c: c["requests_per_unique_prompt"] - c["bound"])
            targets.append(
                {
                    "name": f"resume after SIGKILL ({path}, {latency * 1000:g} ms, "
                    f"c{worst['concurrency']}): requests ÷ unique prompts, worst",
                    "measured": worst["requests_per_unique_prompt"],
                    "target": f"<= {worst['bound']}",
                    "met": all(c["met"] for c in mine),
                }
            )
    return {
        "params": {
            "n": n,
            "latencies": LATENCIES,
            "kill_at": scale.get("resume_kill_at", KILL_AT),
            "slack": SLACK,
        },
        "cases": cases,
        "targets": targets,
    }
