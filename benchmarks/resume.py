"""4. Resume waste: SIGKILL a run half-way, run it again, count every request the server saw.

A child process maps ``N`` unique prompts (20 ms latency, default concurrency 32) into a DuckDB cache;
the parent polls the simulator's ``/stats`` and SIGKILLs the child once half the prompts are answered;
a second child runs the same map to completion. Waste = total requests ÷ unique prompts. Rows lost to
the kill are those in flight (≤ concurrency) plus those answered but not yet flushed (≤ the flush
batch), so the target is ``1 + (concurrency + flush_rows) ÷ N``. The rerun's result is checked row by
row against the simulator's deterministic answers.

Two settings run: the defaults (``flush_rows=5000``, ``flush_interval=1 s``) and a tight flush
(``flush_rows=250``, ``flush_interval=0.25 s``), where the bound is much closer to 1.
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

__all__ = ["run"]

LATENCY = 0.02
CONCURRENCY = 32  # the library's default


def _kill_half_way(sim: SimProcess, params: dict[str, Any], n: int) -> dict[str, Any]:
    args = [sys.executable, "-m", "benchmarks._loops", json.dumps(params)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ok = 0
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            ok = sim.stats()["ok"]
            if ok >= n // 2 or proc.poll() is not None:
                break
            time.sleep(0.005)
        killed = proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    time.sleep(0.2)  # let the server finish the requests the dead client left behind
    return {"killed": killed, "ok_at_kill": ok, "requests_after_kill": sim.stats()["requests"]}


def _one(name: str, n: int, options: dict[str, Any], workdir: Path) -> dict[str, Any]:
    cache = workdir / f"resume-{name}.duckdb"
    flush_rows = options.get("flush_rows", 5000)
    with SimProcess(latency=LATENCY) as sim:
        params = {
            "arm": "map_aiohttp",
            "url": sim.url,
            "n": n,
            "concurrency": CONCURRENCY,
            "prefix": f"resume-{name}",
            "options": {"cache": str(cache), **options},
        }
        first = _kill_half_way(sim, params, n)
        second = run_child("_loops", params, sim=sim)
        stats = sim.stats()
    total = stats["requests"]
    bound = 1 + (CONCURRENCY + flush_rows) / n
    ratio = round(total / n, 4)
    correct = second.get("errors") == 0 and second.get("wrong") == 0 and second.get("n") == n
    return {
        "settings": {"flush_rows": flush_rows, "flush_interval": options.get("flush_interval", 1.0)},
        "first_run": first,
        "rerun": {k: second.get(k) for k in ("wall_s", "errors", "wrong", "n", "error")},
        "rerun_requests": total - first["requests_after_kill"],
        "total_requests": total,
        "requests_per_unique_prompt": ratio,
        "resent_rows": total - n,
        "bound": round(bound, 4),
        "complete_and_correct": correct,
    }


def run(scale: dict[str, Any], workdir: Path) -> dict[str, Any]:
    n = scale["resume_n"]
    default = _one("default", n, {}, workdir)
    tight = _one("tight-flush", n, {"flush_rows": 250, "flush_interval": 0.25}, workdir)
    targets = []
    for label, res in (("defaults", default), ("flush_rows=250, 0.25 s", tight)):
        targets.append(
            {
                "name": f"resume after SIGKILL at ~50 % ({label}): requests ÷ unique prompts",
                "measured": res["requests_per_unique_prompt"],
                "target": f"<= {res['bound']}",
                "met": res["requests_per_unique_prompt"] <= res["bound"]
                and res["complete_and_correct"]
                and res["first_run"]["killed"],
            }
        )
    return {
        "params": {"n": n, "latency": LATENCY, "concurrency": CONCURRENCY},
        "default": default,
        "tight_flush": tight,
        "targets": targets,
    }
