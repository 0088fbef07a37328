"""8. Cost: the estimate against what the run really cost, and a budget of half the expected cost.

A child process maps ``N`` unique prompts against the simulator (which prices them and reports
``usage.cost``; its own ``/stats`` ``cost`` counter is what was charged):

1. a warm-up of 200 other prompts, so the estimate learns tokens from the cache (as it would after a
   first cell);
2. ``estimate`` → the expected cost (no completion request: the child checks the request counter);
3. ``.llm.map(max_cost=expected / 2)`` → ``BudgetExceededError``: spent ÷ budget (the simulator's count),
   rows done, rows left;
4. the same call again with ``max_cost`` = twice the expected cost: requests ÷ rows left (1.0 = nothing
   paid twice), and the whole run's cost ÷ the estimate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import API_KEY, MODEL, SimProcess, child_main, make_prompts, run_child

__all__ = ["run"]


def _case(params: dict[str, Any]) -> dict[str, Any]:
    import urllib.request

    import polars as pl

    import polars_llm

    url, n = params["url"], int(params["n"])
    root = url[: -len("/v1")]

    def stats() -> dict[str, Any]:
        import json

        with urllib.request.urlopen(root + "/stats?per_prompt=0") as r:
            return json.loads(r.read())

    options = {
        "base_url": url,
        "api_key": API_KEY,
        "cache": params["cache"],
        "progress": False,
        "max_tokens": 64,
    }
    warm = pl.DataFrame({"q": make_prompts(200, "cost-warmup")})
    warm.llm.map("q", MODEL, **options)
    df = pl.DataFrame({"q": make_prompts(n, "cost")})
    before = stats()
    est = df.llm.estimate("q", MODEL, **options)
    estimate_requests = stats()["requests"] - before["requests"]
    budget = est.cost_expected / 2
    try:
        df.llm.map("q", MODEL, max_cost=budget, **options)
        stopped = None
    except polars_llm.BudgetExceededError as err:
        stopped = err
    after_budget = stats()
    charged = after_budget["cost"] - before["cost"]
    done = int(stopped.frame["status"].eq("done").sum()) if stopped is not None else n
    left = stopped.rows_left if stopped is not None else 0
    out = df.llm.map("q", MODEL, max_cost=est.cost_expected * 2, **options)
    final = stats()
    return {
        "n": n,
        "estimate_requests": estimate_requests,
        "cost_expected": est.cost_expected,
        "cost_max": est.cost_max,
        "budget": budget,
        "stopped": stopped is not None,
        "charged_within_budget": charged,
        "spent_over_budget": round(charged / budget, 4),
        "reported_spent_over_budget": round(stopped.spent / budget, 4) if stopped is not None else None,
        "rows_done_at_stop": done,
        "rows_left_at_stop": left,
        "rerun_requests_over_rows_left": round((final["requests"] - after_budget["requests"]) / left, 4)
        if left
        else None,
        "all_done_after_rerun": bool(out["status"].eq("done").all()),
        "actual_over_expected": round((final["cost"] - before["cost"]) / est.cost_expected, 4),
    }


def run(scale: dict[str, Any], workdir: Path) -> dict[str, Any]:
    n = scale.get("cost_n", 10_000)
    with SimProcess() as sim:
        res = run_child("cost", {"url": sim.url, "n": n, "cache": str(workdir / "cost.duckdb")}, sim=sim)
    if "error" in res:
        return res
    res["targets"] = [
        {
            "name": f"{n:,} rows, max_cost = half the estimate: spent ÷ budget (simulator's charge)",
            "measured": res["spent_over_budget"],
            "target": "<= 1.0",
            "met": res["stopped"] and res["spent_over_budget"] <= 1.0 and res["estimate_requests"] == 0,
        },
        {
            "name": "… rows done at the stop / rerun requests ÷ rows left",
            "measured": f"{res['rows_done_at_stop']:,} / {res['rerun_requests_over_rows_left']}",
            "target": "report / 1.0",
            "met": res["rerun_requests_over_rows_left"] == 1.0 and res["all_done_after_rerun"],
        },
        {
            "name": "… whole run's cost ÷ the estimate",
            "measured": res["actual_over_expected"],
            "target": "report",
            "met": True,
        },
    ]
    return res


if __name__ == "__main__":
    child_main(_case)
