"""12. Ray Data: one rate limit for the whole cluster.

A local Ray cluster (``num_cpus=2``, usage stats off) maps ``N`` distinct prompts with 4 workers of 0.25 CPU
against a zero-latency simulator process capped well above ``rpm_limit``. The driver samples the
simulator's answer counter; the cluster-wide rate is measured between 20 % and 90 % of the answers (after
Ray's start-up, before the tail), and compared with ``rpm_limit``. Target: rate ÷ limit ≥ 0.97, no 429.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from ._common import API_KEY, MODEL, SimProcess, child_main, run_child

__all__ = ["run"]


def _case(params: dict[str, Any]) -> dict[str, Any]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import json
    import urllib.request

    import polars_llm.ray as plr
    import ray

    url, n, per_s = params["url"], int(params["n"]), float(params["per_s"])
    root = url[: -len("/v1")]

    def ok() -> int:
        with urllib.request.urlopen(root + "/stats?per_prompt=0") as r:
            return int(json.loads(r.read())["ok"])

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    samples: list[tuple[float, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.monotonic(), ok()))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    ds = ray.data.from_items([{"id": i, "text": f"ray bench prompt {i}"} for i in range(n)])
    out = plr.map(ds, "text", MODEL, base_url=url, api_key=API_KEY, cache=params["cache"], workers=4,
                  num_cpus=0.25, batch_size=100, rpm_limit=per_s * 60)  # fmt: skip
    rows = out.count()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    hub = plr.stats(cache=params["cache"])
    plr.close()
    ray.shutdown()
    lo = next(s for s in samples if s[1] >= 0.2 * n)
    hi = next(s for s in samples if s[1] >= 0.9 * n)
    rate = (hi[1] - lo[1]) / (hi[0] - lo[0]) if hi[0] > lo[0] else None
    ratio = rate and round(rate / per_s, 4)
    return {"rows": rows, "wall_s": round(wall, 1), "rate_per_s": rate and round(rate, 2),
            "limit_per_s": per_s, "rate_over_limit": ratio, "hub": hub}  # fmt: skip


def run(scale: dict[str, Any], workdir: Path) -> dict[str, Any]:
    n, per_s = scale.get("ray_n", 3000), scale.get("ray_per_s", 50.0)
    with SimProcess(rate_limit=int(per_s * 2), window=1.0) as sim:
        params = {"url": sim.url, "n": n, "per_s": per_s, "cache": str(workdir / "ray.duckdb")}
        res = run_child("raybench", params, sim=sim, timeout=1800)
        stats = sim.stats()
    if "error" in res:
        return res
    res["requests"] = stats["requests"]
    res["rate_limited"] = stats["status_counts"].get("429", 0)
    res["targets"] = [
        {"name": f"4 workers, rpm_limit = {per_s:g}/s: cluster-wide rate ÷ limit",
         "measured": res["rate_over_limit"], "target": ">= 0.97",
         "met": bool(res["rate_over_limit"] and res["rate_over_limit"] >= 0.97)},
        {"name": "… one permit per request from the one hub (leases ÷ requests), 429s", "measured":
         f"{res['hub']['leases'] / max(1, res['requests']):.3f}, {res['rate_limited']}", "target": "1.000, 0",
         "met": res["hub"]["leases"] == res["requests"] and res["rate_limited"] == 0},
    ]  # fmt: skip
    return res


if __name__ == "__main__":
    child_main(_case)
