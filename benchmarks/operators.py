"""Row operators: what ``pack`` saves, and what ``classify`` costs over a hand-written ``.llm.map``.

``uv run python -m benchmarks.operators [--n 1000] [--timing-n 5000] [--rounds 3] [--out DIR]`` writes
``<out>/operators-<UTC timestamp>.json`` (default ``benchmarks/results``); ``python -m benchmarks --only
operators`` runs it as a section (full, ``--quick`` or tiny ``--smoke`` sizes). The simulator runs in its own
process (zero latency); its own counters give requests and prompt tokens (``max(1, chars // 4)`` over
all message text).

1. **Packing** — ``n`` texts of ~150 characters, each naming one of 5 labels, 300-character
   instructions, ``classify`` with ``pack=1``, ``pack=20`` and ``pack="auto"`` (a fresh cache each):
   requests and input tokens relative to ``pack=1``, and the share of rows labelled right (the simulator
   answers the label a text names, so this checks the packing machinery, not a model's accuracy).
   Targets: ``pack=20`` sends ≤ 1/15 of the requests and ≤ 0.45 × the input tokens.
2. **Overhead** — ``timing_n`` unique texts, ``classify(pack=1)`` vs ``.llm.map`` with the equivalent
   hand-written ``response_model`` and system prompt (the same requests), each with a fresh DuckDB cache,
   after a warm-up, interleaved ``rounds`` times; best round of each (and the median of the
   rounds' paired ratios). Target: classify's rows/s ÷ map's ≥ 0.9.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, Field

import polars_llm  # noqa: F401  (registers the namespaces)

from . import _common
from ._common import API_KEY, BENCH_DIR, MODEL, SimProcess, library_versions, machine_info

__all__ = ["run", "section"]

SIZES: dict[str, dict[str, int]] = {
    "full": {"n": 1000, "timing_n": 5000, "rounds": 5},
    "quick": {"n": 1000, "timing_n": 1000, "rounds": 1},
    "smoke": {"n": 100, "timing_n": 200, "rounds": 1},
}

LABELS = ["billing", "shipping", "quality", "account", "other"]
INSTRUCTIONS = (
    "You label customer support messages for a retail company. Read the whole message before deciding. "
    "Billing covers charges, refunds and invoices; shipping covers delivery and tracking; quality covers "
    "broken or faulty goods; account covers logins and passwords; other is anything else. Pick one label."
)
_FILLER = "the customer wrote to the help desk again this week and asked for an update about the case"


def texts(n: int) -> list[str]:
    """``n`` unique texts of ~150 characters, text ``i`` naming ``LABELS[i % 5]``."""
    return [
        f"Message {i}: {_FILLER} about {LABELS[i % 5]} issues, ref {i * 7919 % 100_000}." for i in range(n)
    ]


class Hand(BaseModel):  # what a user writes by hand for the same request
    label: Literal["billing", "shipping", "quality", "account", "other"] = Field(
        description="the one label that fits best"
    )


def _options(sim: SimProcess, cache: Path | None, **more: Any) -> dict[str, Any]:
    return {"model": MODEL, "base_url": sim.url, "api_key": API_KEY, "cache": cache, "progress": False,
            "concurrency": 64, **more}  # fmt: skip


def _delta(sim: SimProcess, before: dict[str, Any]) -> dict[str, int]:
    after = sim.stats()
    return {k: after[k] - before[k] for k in ("requests", "tokens_in", "tokens_out")}


def packing(sim: SimProcess, n: int, workdir: Path) -> dict[str, Any]:
    series = pl.Series("text", texts(n))
    want = [LABELS[i % 5] for i in range(n)]
    arms: dict[str, dict[str, Any]] = {}
    for name, pack in (("pack=1", 1), ("pack=20", 20), ("pack=auto", "auto")):
        before = sim.stats()
        cache = workdir / f"pack-{name}.duckdb"
        out = series.llm.classify(LABELS, instructions=INSTRUCTIONS, **_options(sim, cache, pack=pack))
        arms[name] = {
            **_delta(sim, before),
            "right": sum(a == b for a, b in zip(out.to_list(), want, strict=True)) / n,
        }
    base = arms["pack=1"]
    for arm in arms.values():
        arm["requests_ratio"] = round(arm["requests"] / base["requests"], 4)
        arm["tokens_in_ratio"] = round(arm["tokens_in"] / base["tokens_in"], 4)
        arm["tokens_out_ratio"] = round(arm["tokens_out"] / base["tokens_out"], 4)
    return arms


def _timed(arm: str, sim: SimProcess, series: pl.Series, cache: Path, system: str) -> float:
    start = time.perf_counter()
    if arm == "classify":
        out = series.llm.classify(LABELS, instructions=INSTRUCTIONS, **_options(sim, cache))
    else:
        mapped = series.llm.map(**_options(sim, cache, response_model=Hand, system=system))
        out = mapped.struct.field("result").struct.field("label")
    elapsed = time.perf_counter() - start
    assert out.null_count() == 0
    return len(series) / elapsed


def overhead(sim: SimProcess, n: int, rounds: int, workdir: Path) -> dict[str, Any]:
    from polars_llm._operators.classify import classify_task

    series = pl.Series("text", texts(n))
    system = classify_task(LABELS, instructions=INSTRUCTIONS).instructions  # the same prompt by hand
    for arm in ("classify", "map"):  # warm-up: imports, the first DuckDB file, the simulator's caches
        _timed(arm, sim, series.head(200), workdir / f"warm-{arm}.duckdb", system)
    runs: dict[str, list[float]] = {"classify": [], "map": []}
    for r in range(rounds):
        for arm in ("classify", "map") if r % 2 == 0 else ("map", "classify"):
            runs[arm].append(_timed(arm, sim, series, workdir / f"overhead-{arm}-{r}.duckdb", system))
    best = {arm: max(rates) for arm, rates in runs.items()}
    paired = sorted(c / m for c, m in zip(runs["classify"], runs["map"], strict=True))
    return {"rows_per_s": {arm: [round(x) for x in rates] for arm, rates in runs.items()},
            "best": {arm: round(x) for arm, x in best.items()},
            "ratio": round(best["classify"] / best["map"], 3),
            "paired_median": round(paired[len(paired) // 2], 3)}  # fmt: skip


def run(n: int = 1000, timing_n: int = 5000, rounds: int = 5) -> dict[str, Any]:
    with TemporaryDirectory(prefix="bench-operators-") as tmp, SimProcess() as sim:
        workdir = Path(tmp)
        packed = packing(sim, n, workdir)
        timed = overhead(sim, timing_n, rounds, workdir)
    p20 = packed["pack=20"]
    targets = [
        {"name": "pack=20 requests ÷ pack=1", "measured": p20["requests_ratio"], "target": "<= 0.0667",
         "met": p20["requests_ratio"] <= 1 / 15},
        {"name": "pack=20 input tokens ÷ pack=1", "measured": p20["tokens_in_ratio"], "target": "<= 0.45",
         "met": p20["tokens_in_ratio"] <= 0.45},
        {"name": "classify(pack=1) rows/s ÷ map with a hand-written response_model",
         "measured": timed["ratio"], "target": ">= 0.9", "met": timed["ratio"] >= 0.9},
    ]  # fmt: skip
    return {
        "params": {"n": n, "timing_n": timing_n, "rounds": rounds, "labels": len(LABELS),
                   "instructions_chars": len(INSTRUCTIONS), "text_chars": round(sum(map(len, texts(n))) / n)},
        "packing": packed,
        "overhead": timed,
        "targets": targets,
    }  # fmt: skip


def _case(params: dict[str, Any]) -> dict[str, Any]:
    return run(int(params["n"]), int(params["timing_n"]), int(params["rounds"]))


def section(scale: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """The ``operators`` section of ``python -m benchmarks``: :func:`run` in a child process."""
    return _common.run_child("operators", scale.get("operators", SIZES["full"]), timeout=1200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--timing-n", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args()
    result = run(args.n, args.timing_n, args.rounds)
    result["meta"] = {"machine": machine_info(), "versions": library_versions(),
                      "command": "uv run python -m benchmarks.operators"}  # fmt: skip
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%MZ")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"operators-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("packing", "overhead", "targets")}, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("{"):  # a section's child (run_child)
        _common.child_main(_case)
    else:
        main()
