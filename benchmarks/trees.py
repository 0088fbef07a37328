"""Section 1's overhead ratio of this checkout and of other ones, measured in one run.

A change that should not move the figures (a reshape, a refactor) is checked by measuring the trees
side by side, not against a number taken on another day:

    git worktree add --detach ../before <commit> && (cd ../before && uv sync --locked)
    uv run python -m benchmarks.trees ../before --rounds 6

One simulator process (this checkout's) serves every arm. Each round runs, in a rotating order, the bare
aiohttp loop and ``df.llm.map`` (DuckDB store, defaults) of this checkout, ``df.llm.map`` with the journal
switched off (section 1's benchmark-only patch; for a "before" that has no journal), and ``df.llm.map``
of each other checkout (``map_other``; ``map_other1``, ``map_other2``… for several), each in a fresh
child process started with that checkout's own interpreter and ``benchmarks._loops`` (so each tree
imports its own package paths). The ratio of an arm is its best round's prompts/s ÷ the best bare
round's (as section 1), beside the median of the per-round ratios; and the same ratio counted in the
client's CPU per prompt (bare's ÷ the arm's, least of the rounds and the median of per-round ratios),
which a busy machine disturbs far less than a rate.
The result goes to ``benchmarks/results/trees-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._common import BENCH_DIR, ROOT, SimProcess, library_versions, machine_info

__all__ = ["main"]


def _git(tree: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=tree, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _python(tree: Path) -> str:
    return str(tree / ".venv" / "bin" / "python") if tree != ROOT else sys.executable


def _arm(tree: Path, arm: str, sim: SimProcess, params: dict[str, Any]) -> dict[str, Any]:
    """One arm in a child process of ``tree`` (its interpreter, its ``benchmarks._loops``)."""
    args = [_python(tree), "-m", "benchmarks._loops", json.dumps({"arm": arm, "url": sim.url, **params})]
    start, sim_cpu0 = time.monotonic(), sim.cpu_seconds()
    done = subprocess.run(args, capture_output=True, text=True, cwd=tree, timeout=600, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": f"exit {done.returncode}: {(done.stderr or done.stdout)[-2000:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    result["process_wall_s"] = round(time.monotonic() - start, 3)
    result["sim_cpu_s"] = round(sim.cpu_seconds() - sim_cpu0, 3)
    # the client's CPU per prompt (all its threads): what a change to the client's code moves, and a
    # figure a busy machine disturbs far less than a rate (other processes take turns, not cycles)
    cpu = result["client_cpu_share"] * result["wall_s"]
    result["client_cpu_us_per_prompt"] = round(cpu / result["n"] * 1e6, 1)
    return result


def _rate(run: dict[str, Any]) -> float | None:
    ok = "prompts_per_s" in run and not run.get("errors") and not run.get("wrong")
    return run["prompts_per_s"] if ok else None


def _cpu(run: dict[str, Any]) -> float | None:
    return run["client_cpu_us_per_prompt"] if _rate(run) else None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.trees", description=__doc__.split("\n")[0])
    parser.add_argument(
        "other", type=Path, nargs="+", help="other checkouts of the project, each with its own .venv"
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--n", type=int, default=20_000, help="prompts per arm (section 1: 20,000)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".polars_llm" / "bench-trees")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args(argv)
    others = [path.resolve() for path in args.other]
    labels = ["other"] if len(others) == 1 else [f"other{i}" for i in range(1, len(others) + 1)]
    trees = {"this": ROOT, **dict(zip(labels, others, strict=True))}
    # name: (tree, child arm, options)
    arms: dict[str, tuple[Path, str, dict[str, Any]]] = {
        "bare_aiohttp": (ROOT, "bare_aiohttp", {}),
        "map_this": (ROOT, "map_aiohttp", {}),
        "map_this_nojournal": (ROOT, "map_aiohttp", {"journal": False}),
        **{f"map_{name}": (tree, "map_aiohttp", {}) for name, tree in zip(labels, others, strict=True)},
    }
    started, load_start = datetime.now(UTC), os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in arms}
    with SimProcess() as sim:
        for r in range(args.rounds):
            names = list(arms)
            names = names[r % len(names) :] + names[: r % len(names)]  # rotate: no arm always first
            for name in names:
                tree, arm, options = arms[name]
                if arm != "bare_aiohttp":
                    options = {**options, "cache": str(args.workdir / f"{name}-{r}.duckdb")}
                params = {"n": args.n, "concurrency": args.concurrency, "prefix": f"trees-{name}-{r}"}
                result = _arm(tree, arm, sim, {**params, "options": options})
                result["round"] = r
                runs[name].append(result)
                shown = result.get("prompts_per_s", result.get("error"))
                print(f"round {r} {name}: {shown}", file=sys.stderr)
    best = {name: max((x for x in map(_rate, rs) if x), default=None) for name, rs in runs.items()}
    cpu = {name: [_cpu(r) for r in rs] for name, rs in runs.items()}
    least = {name: min((x for x in c if x), default=None) for name, c in cpu.items()}
    ratios: dict[str, Any] = {}
    for name in arms:
        if name == "bare_aiohttp" or not best[name] or not best["bare_aiohttp"]:
            continue
        pairs = [
            m / b
            for m, b in zip(map(_rate, runs[name]), map(_rate, runs["bare_aiohttp"]), strict=True)
            if m and b
        ]
        cpu_pairs = [b / m for m, b in zip(cpu[name], cpu["bare_aiohttp"], strict=True) if m and b]
        bare_least, least_here = least["bare_aiohttp"], least[name]
        ratios[f"{name}/bare_aiohttp"] = {
            "best": round(best[name] / best["bare_aiohttp"], 3),
            "median_of_rounds": round(statistics.median(pairs), 3) if pairs else None,
            "per_round": [round(p, 3) for p in pairs],
            # bare's client CPU per prompt ÷ this arm's: the same ratio, counted in CPU instead of time
            "cpu_least": round(bare_least / least_here, 3) if bare_least and least_here else None,
            "cpu_median_of_rounds": round(statistics.median(cpu_pairs), 3) if cpu_pairs else None,
        }
    results = {
        "meta": {
            "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": "python -m benchmarks.trees " + " ".join(argv if argv is not None else sys.argv[1:]),
            "trees": {
                k: {
                    "commit": _git(t, "rev-parse", "HEAD"),
                    "subject": _git(t, "log", "-1", "--format=%s"),
                }
                for k, t in trees.items()
            },
            "machine": machine_info(),
            "versions": library_versions(),
            "loadavg_start": load_start,
            "loadavg_end": os.getloadavg(),
        },
        "params": {"n": args.n, "concurrency": args.concurrency, "rounds": args.rounds, "latency": 0.0},
        "prompts_per_s": best,
        "client_cpu_us_per_prompt": least,
        "ratios": ratios,
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"trees-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    brief = {k: {n: x for n, x in v.items() if n != "per_round"} for k, v in ratios.items()}
    print(json.dumps({"prompts_per_s": best, "ratios": brief}))
    print(f"results: {path}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
