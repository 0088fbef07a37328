"""11. Out of core: memory that grows with the chunk, not with the rows.

Inputs are Parquet files of ``N`` rows, half of them distinct (each prompt twice), ~200 characters each,
in row groups of 100k. Each arm runs in its own process against a zero-latency simulator process and
reports its peak RSS; growth per row is ``(peak at big − peak at small) ÷ (big − small)``:

* ``cli`` — ``polars-llm run in.parquet --column q -o out.parquet`` (streams input to output);
* ``lazy`` — ``pl.scan_parquet(in).llm.map("q", ...).sink_parquet(out)``;
* ``expr`` — the expression form in a lazy query, ``pl.scan_parquet(in).with_columns(pl.col("q").llm.map(
  ...).alias("llm")).unnest("llm").sink_parquet(out)``;
* ``memory`` — the in-memory path, ``pl.read_parquet(in).llm.map("q", ...)`` then ``write_parquet``
  (the throughput reference: the streamed arms should be within 10 % of it).

Then a no-op rerun of ``rerun_n`` rows against a store filled directly with their answers (as
``cached.py`` does): wall time and peak RSS through the CLI, the lazy sink and the expression form, every
row checked; and the expression form's no-op rerun of the ``big`` input (its prompts are among those
stored), so its memory is seen at two sizes with nothing sent.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ._common import API_KEY, MODEL, SimProcess, child_main, run_child

__all__ = ["run"]

PAD = "x" * 170


def make_input(path: Path, n: int) -> None:
    """``n`` rows, ``q`` holds ``n // 2`` distinct ~200-character prompts (each twice), ``id`` the row."""
    import polars as pl

    if path.exists():
        return
    frame = pl.DataFrame({"id": pl.int_range(n, eager=True)}).with_columns(
        q=pl.format("{} review number {} of the kettle", pl.lit(PAD), pl.col("id") // 2)
    )
    frame.write_parquet(path, row_group_size=100_000)


def _check(out: Path, n: int) -> dict[str, Any]:
    import polars as pl

    from polars_llm.sim import expected_text

    lf = pl.scan_parquet(out)
    head = lf.head(1000).collect()
    wrong = sum(r != expected_text(MODEL, q) for q, r in zip(head["q"], head["result"], strict=True))
    counts = lf.select(
        pl.len(), (pl.col("id").diff().fill_null(1) == 1).all(), (pl.col("status") == "done").sum()
    )
    rows, ordered, done = counts.collect().row(0)
    return {
        "rows": rows,
        "in_order": ordered,
        "done": done,
        "wrong_in_first_1000": wrong,
        "complete": rows == n,
    }


def _case(params: dict[str, Any]) -> dict[str, Any]:
    import polars as pl

    import polars_llm
    from polars_llm.cli import main as cli_main

    arm, source, out, n = params["arm"], Path(params["input"]), Path(params["output"]), int(params["n"])
    options = {"base_url": params["url"], "api_key": API_KEY, "cache": params["cache"], "progress": False,
               "concurrency": 64}  # fmt: skip
    start = time.perf_counter()
    if arm == "cli":
        os.environ.update(POLARS_LLM_BASE_URL=params["url"], OPENROUTER_API_KEY=API_KEY)
        code = cli_main(["run", str(source), "--column", "q", "--model", MODEL, "-o", str(out), "--quiet",
                         "--cache", params["cache"], "--concurrency", "64"])  # fmt: skip
        if code != 0:
            raise RuntimeError(f"polars-llm run exited {code}")
    elif arm == "lazy":
        pl.scan_parquet(source).llm.map("q", MODEL, **options).sink_parquet(out)
    elif arm == "expr":
        mapped = pl.col("q").llm.map(MODEL, **options).alias("llm")
        pl.scan_parquet(source).with_columns(mapped).unnest("llm").sink_parquet(out)
    else:
        pl.read_parquet(source).llm.map("q", MODEL, **options).write_parquet(out)
    wall = time.perf_counter() - start
    assert polars_llm  # registers .llm
    return {"arm": arm, "n": n, "wall_s": round(wall, 2), "rows_per_s": round(n / wall), **_check(out, n)}


def _populate(params: dict[str, Any]) -> dict[str, Any]:
    """Fill a store with the answers of every prompt of ``input`` (no request), as a finished run would."""
    import polars as pl

    from polars_llm import resolve_config
    from polars_llm._pipeline.pipeline import prepare
    from polars_llm._store.jobs import jobs_frame
    from polars_llm._store.store import Outcome, Store
    from polars_llm.sim import expected_text

    cfg = resolve_config(model=MODEL, api_key=API_KEY, base_url=params["url"], cache=params["cache"])
    start = time.perf_counter()
    with Store.open(cfg.cache_path) as store:
        for chunk in pl.scan_parquet(params["input"]).select("q").collect_batches(chunk_size=500_000):
            prepared = prepare(chunk.get_column("q"), cfg)
            store.register(jobs_frame(cfg, prepared.keys, prepared.unique))
            now = time.time()
            store.write_outcomes(
                [
                    Outcome(key=k, status="done", attempts=1, finished_at=now, result=expected_text(MODEL, p))
                    for k, p in zip(prepared.keys, prepared.unique, strict=True)
                ]
            )
        counts = store.counts()
    return {"populate_s": round(time.perf_counter() - start, 1), "counts": counts}


def run(scale: dict[str, Any], workdir: Path) -> dict[str, Any]:
    small, big, rerun_n = scale["ooc_small"], scale["ooc_big"], scale["ooc_rerun"]
    results: dict[str, Any] = {"params": {"small": small, "big": big, "rerun_n": rerun_n}, "live": {}}
    for n in (small, big):
        make_input(workdir / f"ooc-{n}.parquet", n)
    with SimProcess() as sim:
        for arm in ("memory", "cli", "lazy", "expr"):
            for n in (small, big):
                params = {"arm": arm, "input": str(workdir / f"ooc-{n}.parquet"), "n": n, "url": sim.url,
                          "output": str(workdir / f"ooc-{arm}-{n}.parquet"),
                          "cache": str(workdir / f"ooc-{arm}-{n}.duckdb")}  # fmt: skip
                results["live"][f"{arm}-{n}"] = run_child("outofcore", params, sim=sim, timeout=1800)
        make_input(workdir / f"ooc-{rerun_n}.parquet", rerun_n)
        cache = str(workdir / "ooc-rerun.duckdb")
        base = {
            "input": str(workdir / f"ooc-{rerun_n}.parquet"),
            "n": rerun_n,
            "url": sim.url,
            "cache": cache,
        }
        results["populate"] = run_child("outofcore", {**base, "arm": "populate"}, timeout=3600)
        before = sim.stats()["requests"]
        for arm in ("cli", "lazy", "expr"):
            out = str(workdir / f"ooc-rerun-{arm}.parquet")
            results[f"rerun-{arm}"] = run_child(
                "outofcore", {**base, "arm": arm, "output": out}, timeout=1800
            )
        small_rerun = {**base, "input": str(workdir / f"ooc-{big}.parquet"), "n": big, "arm": "expr"}
        out = str(workdir / f"ooc-rerun-expr-{big}.parquet")
        results[f"rerun-expr-{big}"] = run_child("outofcore", {**small_rerun, "output": out}, timeout=1800)
        results["rerun_requests"] = sim.stats()["requests"] - before
    results["targets"] = _targets(results, small, big, rerun_n)
    return results


def _target(name: str, measured: Any, target: str, met: bool) -> dict[str, Any]:
    return {"name": name, "measured": measured, "target": target, "met": met}


def _targets(results: dict[str, Any], small: int, big: int, rerun_n: int) -> list[dict[str, Any]]:
    live = results["live"]
    reference = live.get(f"memory-{big}", {}).get("rows_per_s")
    targets = []
    for arm in ("cli", "lazy", "expr"):
        a, b = live.get(f"{arm}-{small}", {}), live.get(f"{arm}-{big}", {})
        ok = all(r.get("complete") and r.get("in_order") and not r.get("wrong_in_first_1000") for r in (a, b))
        peak = b.get("peak_rss_mb")
        growth = (peak - a["peak_rss_mb"]) * 2**20 / (big - small) if peak and a.get("peak_rss_mb") else None
        speed = b["rows_per_s"] / reference if b.get("rows_per_s") and reference else None
        rerun = results.get(f"rerun-{arm}", {})
        rerun_ok = rerun.get("complete") and results.get("rerun_requests") == 0
        rerun_met = rerun.get("wall_s", 1e9) <= 30 and rerun.get("peak_rss_mb", 1e9) <= 1536
        targets += [
            _target(f"{arm}: peak RSS at {big:,} rows (MiB)", peak, "<= 1024",
                    bool(ok and peak and peak <= 1024)),
            _target(f"{arm}: growth per added row (bytes)", None if growth is None else round(growth),
                    "<= 200", growth is not None and growth <= 200),
            _target(f"{arm}: rows/s ÷ in-memory path at {big:,}", speed and round(speed, 3), ">= 0.9",
                    bool(speed and speed >= 0.9)),
            _target(f"{arm}: no-op rerun of {rerun_n:,} rows: seconds, peak MiB",
                    f"{rerun.get('wall_s')}, {rerun.get('peak_rss_mb')}", "<= 30 s, <= 1536 MiB",
                    bool(rerun_ok and rerun_met)),
        ]  # fmt: skip
    at_big, at_rerun = results.get(f"rerun-expr-{big}", {}), results.get("rerun-expr", {})
    peaks = at_big.get("peak_rss_mb"), at_rerun.get("peak_rss_mb")
    flat = bool(peaks[0] and peaks[1] and peaks[0] <= 1024 and peaks[1] <= 1024)
    targets.append(
        _target(f"expr: no-op rerun peak RSS at {big:,} and {rerun_n:,} rows (MiB)", list(peaks),
                "<= 1024 at both (flat)", flat and bool(at_big.get("complete")))
    )  # fmt: skip
    return targets


def _main(params: dict[str, Any]) -> dict[str, Any]:
    return _populate(params) if params["arm"] == "populate" else _case(params)


if __name__ == "__main__":
    child_main(_main)
