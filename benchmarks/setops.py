"""Set operators (issue 25): reduce, join, top_k against the simulator in its own process, one run.

``uv run python -m benchmarks.setops [--quick] [--out benchmarks/results]`` writes ``setops-<UTC>.json``;
``python -m benchmarks --only setops`` runs it as a section (full, ``--quick`` or tiny ``--smoke`` sizes).

* **reduce** — 200 groups × 50 rows at 300 ms latency (``max_input_tokens=600``: ~3 leaves per group, so
  a two-level tree): wall time against ``(depth + 1) × 1.5 × latency × ceil(requests / concurrency)``;
  the rerun's requests (goal 0); 10 rows appended to one group: requests re-sent, and whether every one
  of them holds only that group's rows.
* **join** — 1,000 × 1,000 rows, ``k=10``, planted true pairs (ad ``i`` ↔ CV ``σ(i)`` share skills, a city
  and a ``#tag``; the simulator's judgement is true exactly for shared tags): pair checks (goal ≤ 10,000)
  beside embedding requests, and recall of the planted pairs (goal ≥ 0.95); the same join with
  ``pack=10`` (the pair checks go through ``llm.filter``'s machinery, 10 pairs per request) on a fresh
  cache: its pair-check requests ÷ ``pack=1``'s (goal ≤ 0.2), whether it finds the same pairs, and the
  requests of a rerun with ``pack=1`` over its cache (goal 0).
* **top_k** — ``top_k(10)`` over 1,000 rows at 300 ms latency for several window sizes: requests against
  ``0.3 × n log₂ n`` and wall time; the pairwise alternative's comparisons are counted by running a
  merge-sort-free selection (a heap of k over pairwise comparisons) against the same visible scores.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from functools import cmp_to_key
from pathlib import Path
from typing import Any

from ._common import (
    API_KEY,
    BENCH_DIR,
    MODEL,
    SimProcess,
    child_main,
    library_versions,
    machine_info,
    run_child,
)

__all__ = ["measure", "run"]

SIZES: dict[str, dict[str, Any]] = {
    "full": {"groups": 200, "rows": 50, "latency": 0.3, "join_n": 1000, "topk_n": 1000},
    "quick": {"groups": 40, "rows": 50, "latency": 0.3, "join_n": 200, "topk_n": 300},
    "smoke": {"groups": 6, "rows": 12, "latency": 0.02, "join_n": 40, "topk_n": 60},
}

SKILLS = [
    "python", "rust", "sql", "excel", "welding", "nursing", "cooking", "sales", "design", "law", "golang",
    "java", "biology",
]  # fmt: skip
CITIES = ["paris", "lyon", "berlin", "rome", "madrid", "porto", "vienna", "oslo", "dublin", "prague"]
WORDS = ["lid", "handle", "switch", "noise", "smell", "leak", "crack", "rust", "stain", "wobble"]


def _options(url: str, cache: Path, **extra: Any) -> dict[str, Any]:
    return {"base_url": url, "api_key": API_KEY, "cache": cache, "progress": False, **extra}


def _name(g: int) -> str:
    """A product name made of letters (so the simulator's summaries, made of words, tell groups apart)."""
    letters = "bcdfghklmnprstvz"
    return "prod" + "".join(letters[(g >> (4 * d)) & 15] for d in range(3))


def _reviews(groups: int, rows: int) -> Any:
    import polars as pl

    data = [
        (_name(g), f"review {i} of the {_name(g)}: the {WORDS[(g + i) % 10]} is poor ({i})")
        for g in range(groups)
        for i in range(rows)
    ]
    return pl.DataFrame(data, schema=["product", "review"], orient="row")


def bench_reduce(sim: SimProcess, workdir: Path, groups: int, rows: int, latency: float) -> dict[str, Any]:
    import polars as pl

    import polars_llm  # noqa: F401
    from polars_llm._operators import reduce as reduce_module

    sim.configure(latency=latency)
    concurrency = 64
    df = _reviews(groups, rows)
    levels: list[int] = []  # requests per level (engine runs), counted by wrapping the module's stage runner
    real = reduce_module.map_stage

    def counted(prompts: Any, *args: Any) -> Any:
        levels.append(len(prompts))
        return real(prompts, *args)

    reduce_module.map_stage = counted  # type: ignore[assignment]
    opts = _options(sim.url, workdir / "reduce.duckdb", concurrency=concurrency, max_input_tokens=600)
    sim.reset()
    t0 = time.perf_counter()
    first = df.llm.reduce("review", "Summarise the complaints", MODEL, by="product", **opts)
    wall = time.perf_counter() - t0
    requests = sim.stats()["requests"]
    leaves = sum(1 for r in sim._get("/requests?limit=100000") if "Answer once" in _prompt(r))
    depth = len(levels)
    bound = (depth + 1) * 1.5 * latency * math.ceil(requests / concurrency)
    reduce_module.map_stage = real  # type: ignore[assignment]
    sim.reset()
    t0 = time.perf_counter()
    again = df.llm.reduce("review", "Summarise the complaints", MODEL, by="product", **opts)
    rerun_wall = time.perf_counter() - t0
    rerun_requests = sim.stats()["requests"]
    target, neighbour = _name(7), _name(8)
    extra = pl.DataFrame(  # 10 new reviews of one product, about a new complaint (its summary changes)
        {
            "product": [target] * 10,
            "review": [f"review {rows + i} of the {target}: the burner is poor" for i in range(10)],
        }
    )
    sim.reset()
    grown = pl.concat([df, extra]).llm.reduce(
        "review", "Summarise the complaints", MODEL, by="product", **opts
    )
    resent = [_prompt(r) for r in sim._get("/requests?limit=100000")]
    others_same = grown.filter(pl.col("product") != target).equals(first.filter(pl.col("product") != target))
    return {
        "groups": groups,
        "rows_per_group": rows,
        "latency_s": latency,
        "concurrency": concurrency,
        "requests": requests,
        "leaves": leaves,
        "depth": depth,
        "engine_runs_per_level": levels,
        "wall_s": round(wall, 3),
        "bound_s": round(bound, 3),
        "wall_over_bound": round(wall / bound, 3),
        "wall_over_depth_latency_rounds": round(
            wall
            / (latency * (math.ceil(leaves / concurrency) + math.ceil((requests - leaves) / concurrency))),
            3,
        ),
        "all_done": first["status"].eq("done").all(),
        "rerun_requests": rerun_requests,
        "rerun_wall_s": round(rerun_wall, 3),
        "rerun_equal": again.equals(first),
        "append10_requests": len(resent),
        "append10_only_that_group": all(target in p and neighbour not in p for p in resent),
        "append10_other_groups_unchanged": others_same,
    }


def _prompt(record: dict[str, Any]) -> str:
    return str(record["body"]["messages"][-1]["content"])


def _planted(n: int, seed: int = 1) -> tuple[Any, Any, dict[int, int]]:
    import polars as pl

    rng = random.Random(seed)
    partner = list(range(n))
    rng.shuffle(partner)
    ads, cvs = [], [""] * n
    for i in range(n):
        a, b, c = [*rng.sample(SKILLS, 2), rng.choice(CITIES)]
        ads.append(f"job ad {i}: {a} and {b} engineer wanted in {c}, reference #ref{i}")
        cvs[partner[i]] = f"candidate with {a}, {b} experience, based in {c}, applying to #ref{i}"
    return pl.DataFrame({"ad": ads}), pl.DataFrame({"cv": cvs}), dict(enumerate(partner))


def bench_join(sim: SimProcess, workdir: Path, n: int, k: int) -> dict[str, Any]:
    import polars as pl

    sim.configure(latency=0.0)
    ads, cvs, partner = _planted(n)
    ads = ads.with_row_index("ad_id")
    cvs = cvs.with_row_index("cv_id")
    opts = _options(
        sim.url, workdir / "join.duckdb", concurrency=64, k=k, embed_model=MODEL, embed_dimensions=256
    )
    est = ads.llm.estimate_join(cvs, "{left.ad} is a good match for {right.cv}", MODEL, **opts)
    sim.reset()
    t0 = time.perf_counter()
    out = ads.llm.join(cvs, "{left.ad} is a good match for {right.cv}", MODEL, **opts)
    wall = time.perf_counter() - t0
    stats = sim.stats()
    found = set(zip(out["ad_id"].to_list(), out["cv_id"].to_list(), strict=True))
    truth = set(partner.items())
    checks = stats["requests"] - stats["embedding_requests"]
    sim.reset()  # the same join, 10 pairs per request, on a fresh cache
    packed_opts = {**opts, "cache": workdir / "join-pack10.duckdb", "pack": 10}
    t0 = time.perf_counter()
    packed = ads.llm.join(cvs, "{left.ad} is a good match for {right.cv}", MODEL, **packed_opts)
    packed_wall = time.perf_counter() - t0
    pstats = sim.stats()
    packed_checks = pstats["requests"] - pstats["embedding_requests"]
    sim.reset()
    again = ads.llm.join(cvs, "{left.ad} is a good match for {right.cv}", MODEL, **{**packed_opts, "pack": 1})
    packed_found = set(zip(packed["ad_id"].to_list(), packed["cv_id"].to_list(), strict=True))
    return {
        "left_rows": n,
        "right_rows": n,
        "k": k,
        "estimated_pairs": est.detail,
        "pair_checks": stats["requests"] - stats["embedding_requests"],
        "pair_check_goal": n * k,
        "share_of_product": (stats["requests"] - stats["embedding_requests"]) / (n * n),
        "embedding_requests": stats["embedding_requests"],
        "embedding_inputs": stats["embedding_inputs"],
        "matches": out.height,
        "recall": len(found & truth) / len(truth),
        "precision": len(found & truth) / max(len(found), 1),
        "wall_s": round(wall, 3),
        "tokens_in": stats["tokens_in"],
        "packed": {
            "pack": 10,
            "pair_check_requests": packed_checks,
            "requests_ratio": round(packed_checks / max(checks, 1), 4),
            "tokens_in": pstats["tokens_in"],
            "tokens_in_ratio": round(pstats["tokens_in"] / max(stats["tokens_in"], 1), 4),
            "same_pairs": packed_found == found,
            "recall": len(packed_found & truth) / len(truth),
            "wall_s": round(packed_wall, 3),
            "rerun_with_pack1_requests": sim.stats()["requests"],
            "rerun_equal": again.equals(packed),
        },
        "result_columns": out.columns,
        "check_pl": pl.__version__,
    }


def _pairwise_comparisons(scores: list[float], k: int) -> int:
    """Comparisons a pairwise top-k needs (a size-k min-heap over the stream, then sorting the k): the
    cheapest pairwise scheme for k ≪ n, each comparison one LLM request."""
    count = 0

    class Item:
        def __init__(self, score: float) -> None:
            self.score = score

        def __lt__(self, other: Item) -> bool:
            nonlocal count
            count += 1
            return self.score < other.score

    heap: list[Item] = []
    for s in scores:
        item = Item(s)
        if len(heap) < k:
            heapq.heappush(heap, item)
        elif heap[0] < item:
            heapq.heapreplace(heap, item)

    def cmp(a: Item, b: Item) -> int:
        return -1 if b < a else 1

    sorted(heap, key=cmp_to_key(cmp))
    return count


def bench_top_k(sim: SimProcess, workdir: Path, n: int, k: int, latency: float) -> dict[str, Any]:
    import polars as pl

    from polars_llm._operators.topk import requests_needed

    sim.configure(latency=latency)
    rng = random.Random(3)
    urgencies = rng.sample(range(10 * n), n)
    df = pl.DataFrame(
        {"ticket": [f"ticket {i}: customer waiting, urgency {u}" for i, u in enumerate(urgencies)]}
    )
    truth = sorted(urgencies, reverse=True)[:k]
    goal = 0.3 * n * math.log2(n)
    arms = []
    for window in (20, 40, 80):
        sim.reset()
        opts = _options(sim.url, workdir / f"topk-{window}.duckdb", concurrency=64, window=window)
        t0 = time.perf_counter()
        out = df.llm.top_k(k, "most urgent", MODEL, column="ticket", **opts)
        wall = time.perf_counter() - t0
        got = [int(t.rsplit(" ", 1)[1]) for t in out["ticket"]]
        arms.append(
            {
                "window": window,
                "requests": sim.stats()["requests"],
                "formula": requests_needed(n, k, window),
                "requests_over_goal": round(sim.stats()["requests"] / goal, 4),
                "wall_s": round(wall, 3),
                "exact_top_k_in_order": got == truth,
            }
        )
    return {
        "n": n,
        "k": k,
        "latency_s": latency,
        "goal_requests": round(goal, 1),
        "n_log2_n": round(n * math.log2(n), 1),
        "pairwise_heap_comparisons": _pairwise_comparisons([float(u) for u in urgencies], k),
        "arms": arms,
    }


def measure(params: dict[str, Any]) -> dict[str, Any]:
    """Every case at the sizes of ``params`` (see :data:`SIZES`), the simulator in its own process."""
    latency = float(params["latency"])
    with (
        tempfile.TemporaryDirectory(prefix="setops-") as tmp,
        SimProcess(request_log=100_000, embedding_dimensions=256) as sim,
    ):
        workdir = Path(tmp)
        return {
            "params": params,
            "reduce": bench_reduce(sim, workdir, int(params["groups"]), int(params["rows"]), latency),
            "join": bench_join(sim, workdir, int(params["join_n"]), 10),
            "top_k": bench_top_k(sim, workdir, int(params["topk_n"]), 10, latency),
        }


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's numbers, measured against their goals."""
    red, join, top = result["reduce"], result["join"], result["top_k"]
    w40 = next(arm for arm in top["arms"] if arm["window"] == 40)
    packed = join["packed"]
    return [
        {"name": f"reduce {red['groups']} groups × {red['rows_per_group']} rows: wall ÷ bound",
         "measured": red["wall_over_bound"], "target": "<= 1.0", "met": red["wall_over_bound"] <= 1.0},
        {"name": "reduce rerun: requests", "measured": red["rerun_requests"], "target": "0",
         "met": red["rerun_requests"] == 0 and red["rerun_equal"]},
        {"name": "reduce, 10 rows appended to one group: requests (that group's branch only)",
         "measured": red["append10_requests"], "target": "that branch",
         "met": red["append10_only_that_group"] and red["append10_other_groups_unchanged"]},
        {"name": f"join {join['left_rows']:,} × {join['right_rows']:,}, k=10: pair checks",
         "measured": join["pair_checks"], "target": f"<= {join['pair_check_goal']:,}",
         "met": join["pair_checks"] <= join["pair_check_goal"]},
        {"name": "join: recall of the planted pairs", "measured": join["recall"], "target": ">= 0.95",
         "met": join["recall"] >= 0.95},
        {"name": "join pack=10: pair-check requests ÷ pack=1 (same pairs)",
         "measured": packed["requests_ratio"], "target": "<= 0.2",
         "met": packed["requests_ratio"] <= 0.2 and packed["same_pairs"]},
        {"name": "join pack=10, rerun with pack=1: requests", "measured": packed["rerun_with_pack1_requests"],
         "target": "0", "met": packed["rerun_with_pack1_requests"] == 0 and packed["rerun_equal"]},
        {"name": f"top_k(10) over {top['n']:,} rows (window 40): requests",
         "measured": w40["requests"], "target": f"<= {top['goal_requests']:,}",
         "met": w40["requests"] <= top["goal_requests"] and w40["exact_top_k_in_order"]},
    ]  # fmt: skip


def _case(params: dict[str, Any]) -> dict[str, Any]:
    return measure(params)


def run(scale: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """The ``setops`` section of ``python -m benchmarks``: :func:`measure` in a child process."""
    params = scale.get("setops", SIZES["full"])
    res = run_child("setops", params, timeout=1200)
    if "error" not in res:
        res["targets"] = targets(res)
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args()
    result = {
        "meta": {
            "started": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "quick": args.quick,
            "command": "uv run python -m benchmarks.setops" + (" --quick" if args.quick else ""),
            "machine": machine_info(),
            "versions": library_versions(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
        **measure(SIZES["quick" if args.quick else "full"]),
    }
    result["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]  # the machine is shared
    result["targets"] = targets(result)
    text = json.dumps(result, indent=1, default=str)
    print(text)
    if not args.quick:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%MZ")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"setops-{stamp}.json").write_text(text + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("{"):  # a section's child (run_child)
        child_main(_case)
    else:
        main()
