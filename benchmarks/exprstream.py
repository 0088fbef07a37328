"""The expression form in a streamed query: peak memory of a no-op rerun, beside ``lf.llm.map``.

Issue 24's measure: a Parquet file of ``n`` rows, half of them distinct (each prompt twice, ~200
characters), every prompt already answered in the cache, so nothing is sent; peak RSS of

* ``expr`` — ``pl.scan_parquet(in).with_columns(pl.col("q").llm.map(...).alias("llm")).unnest("llm")
  .sink_parquet(out)``, the expression form;
* ``lazy`` — ``pl.scan_parquet(in).llm.map("q", ...).sink_parquet(out)``,

each in its own process, interleaved, at each size of ``sizes`` (the cache holds the prompts of that
size's file only). Run: ``uv run python -m benchmarks.exprstream --sizes 2000000,10000000``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ._common import SimProcess, run_child
from .outofcore import make_input

__all__ = ["run"]


def run(sizes: list[int], workdir: Path, rounds: int = 2) -> dict[str, Any]:
    results: dict[str, Any] = {"sizes": sizes, "rounds": rounds, "cases": {}}
    with SimProcess() as sim:
        for n in sizes:
            source = workdir / f"ooc-{n}.parquet"
            make_input(source, n)
            cache = str(workdir / f"expr-{n}.duckdb")
            base = {"input": str(source), "n": n, "url": sim.url, "cache": cache}
            results["cases"][f"populate-{n}"] = run_child(
                "outofcore", {**base, "arm": "populate"}, timeout=3600
            )
            before = sim.stats()["requests"]
            for r in range(rounds):
                for arm in ("expr", "lazy"):
                    out = str(workdir / f"expr-out-{arm}-{n}.parquet")
                    case = run_child("outofcore", {**base, "arm": arm, "output": out}, timeout=1800)
                    results["cases"][f"{arm}-{n}-{r}"] = case
                    print(
                        arm,
                        n,
                        r,
                        case.get("peak_rss_mb"),
                        case.get("wall_s"),
                        case.get("complete"),
                        flush=True,
                    )
            results["cases"][f"requests-{n}"] = sim.stats()["requests"] - before
    peaks = {
        f"{arm}-{n}": max(results["cases"][f"{arm}-{n}-{r}"].get("peak_rss_mb") or 0 for r in range(rounds))
        for n in sizes
        for arm in ("expr", "lazy")
    }
    results["peak_rss_mb"] = peaks
    results["all_complete"] = all(
        c.get("complete") for k, c in results["cases"].items() if k.startswith(("expr-", "lazy-"))
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="2000000,10000000")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", default=".polars_llm/bench-exprstream")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = run(sizes, workdir, args.rounds)
    stamp = time.strftime("%Y%m%dT%H%MZ", time.gmtime())
    out = Path(__file__).parent / "results" / f"exprstream-{stamp}.json"
    out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results["peak_rss_mb"]), results["all_complete"], out)


if __name__ == "__main__":
    main()
