"""5. Cached rerun: every row is already ``done`` in the store → wall time and peak RSS of ``.llm.map``.

The "already done" state is written straight into the store with the library's own pieces — the content
keys of :func:`polars_llm._pipeline.pipeline.prepare`, the job rows of
:func:`polars_llm._engine.run.jobs_frame`, :meth:`Store.register` and :meth:`Store.write_outcomes` — with the
simulator's exact answers, which is what a finished run leaves behind (doing it through the network would take
minutes for 1M rows). A fresh process then times ``df.llm.map`` on the same prompts against a live simulator,
which must see zero requests; every returned row is checked against the expected answer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ._common import API_KEY, MODEL, SimProcess, child_main, make_prompts, peak_rss_mb, rss_mb, run_child

__all__ = ["run"]

TARGET_SECONDS_1M = 2.0
TARGET_RSS_MB_1M = 1024.0


def _cfg(url: str, cache: str) -> Any:
    from polars_llm import resolve_config

    return resolve_config(model=MODEL, api_key=API_KEY, base_url=url, cache=cache, progress=False)


def populate(params: dict[str, Any]) -> dict[str, Any]:
    import polars as pl

    from polars_llm._engine.run import jobs_frame
    from polars_llm._pipeline.pipeline import prepare
    from polars_llm._store.store import Outcome, Store
    from polars_llm.sim import expected_text

    start = time.perf_counter()
    cfg = _cfg(params["url"], params["cache"])
    prompts = pl.Series("prompt", make_prompts(params["n"], params["prefix"]))
    prepared = prepare(prompts, cfg)
    unique, keys = prepared.unique, prepared.keys
    now = time.time()
    with Store.open(cfg.cache) as store:
        step = 200_000
        for lo in range(0, len(keys), step):
            k, p = keys[lo : lo + step], unique[lo : lo + step]
            store.register(jobs_frame(cfg, k, p))
            store.write_outcomes(
                [
                    Outcome(
                        key=key,
                        status="done",
                        attempts=1,
                        finished_at=now,
                        result=expected_text(MODEL, prompt),
                        tokens_in=17,
                        tokens_out=22,
                        cost=1e-5,
                    )
                    for key, prompt in zip(k, p, strict=True)
                ]
            )
        counts = store.counts()
    return {"populate_s": round(time.perf_counter() - start, 2), "counts": counts}


def rerun(params: dict[str, Any]) -> dict[str, Any]:
    import polars as pl

    import polars_llm  # noqa: F401
    from polars_llm.sim import expected_text

    prompts = make_prompts(params["n"], params["prefix"])
    df = pl.DataFrame({"prompt": prompts})
    rss_before = rss_mb()
    start = time.perf_counter()
    out = df.llm.map(
        "prompt", MODEL, base_url=params["url"], api_key=API_KEY, cache=params["cache"], progress=False
    )
    wall = time.perf_counter() - start
    rss_after, peak = rss_mb(), peak_rss_mb()  # before the checks below allocate their own lists
    done = int((out["status"] == "done").sum())
    wrong = sum(r != expected_text(MODEL, p) for p, r in zip(prompts, out["result"].to_list(), strict=True))
    return {
        "wall_s": round(wall, 3),
        "rows": len(prompts),
        "done": done,
        "wrong": wrong,
        "rss_before_mb": round(rss_before, 1),
        "rss_after_mb": round(rss_after, 1),
        "peak_rss_mb": round(peak, 1),
    }


def run(scale: dict[str, Any], workdir: Path) -> dict[str, Any]:
    sizes: list[int] = scale["cached_sizes"]
    results = []
    with SimProcess() as sim:
        for n in sizes:
            cache = str(workdir / f"cached-{n}.duckdb")
            params = {"mode": "populate", "url": sim.url, "n": n, "prefix": f"cached-{n}", "cache": cache}
            filled = run_child("cached", params, timeout=900)
            sim.reset()
            res = run_child("cached", {**params, "mode": "rerun"}, timeout=900, sim=sim)
            res["requests_sent"] = sim.stats()["requests"]
            res["populate"] = filled
            res["n"] = n
            results.append(res)
    targets = []
    for res in results:
        n = res["n"]
        ok = res.get("done") == n and res.get("wrong") == 0 and res.get("requests_sent") == 0
        label = f"{n:,} rows"
        if n >= 1_000_000:
            targets.append(
                _target(
                    f"cached rerun of {label}: wall time (s)",
                    res.get("wall_s"),
                    f"<= {TARGET_SECONDS_1M}",
                    TARGET_SECONDS_1M,
                    ok,
                )
            )
            targets.append(
                _target(
                    f"cached rerun of {label}: peak RSS (MiB)",
                    res.get("peak_rss_mb"),
                    f"<= {TARGET_RSS_MB_1M:.0f}",
                    TARGET_RSS_MB_1M,
                    ok,
                )
            )
        else:
            targets.append(
                _target(
                    f"cached rerun of {label}: wall time (s)",
                    res.get("wall_s"),
                    "report",
                    None,
                    ok,
                )
            )
            targets.append(
                _target(
                    f"cached rerun of {label}: peak RSS (MiB)", res.get("peak_rss_mb"), "report", None, ok
                )
            )
    return {"params": {"sizes": sizes}, "runs": results, "targets": targets}


def _target(name: str, measured: float | None, target: str, bound: float | None, ok: bool) -> dict[str, Any]:
    met: bool | None = None if ok else False  # reported only: fails just when the rerun itself was wrong
    if bound is not None:
        met = ok and measured is not None and measured <= bound
    return {"name": name, "measured": measured, "target": target, "met": met}


def _main(params: dict[str, Any]) -> dict[str, Any]:
    return populate(params) if params["mode"] == "populate" else rerun(params)


if __name__ == "__main__":
    child_main(_main)
