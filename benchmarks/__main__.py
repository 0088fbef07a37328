"""``uv run python -m benchmarks [--quick | --smoke] [--only overhead,latency,...] [--out DIR]``.

Runs every section in one go (each measurement in its own process, the simulator in another), writes
``<out>/<mode>-<UTC timestamp>.json`` plus ``latest.json`` (full mode) or ``latest-<mode>.json``, and a
Markdown table (``latest.md`` beside it) of every target, measured next to the goal.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import (
    cached,
    cost,
    importtime,
    inputs,
    latency,
    memory,
    operators,
    ordinary,
    outofcore,
    overhead,
    ratelimits,
    raybench,
    resume,
    setops,
)
from ._common import BENCH_DIR, library_versions, machine_info
from .report import markdown

SCALES: dict[str, dict[str, Any]] = {
    "full": {
        "overhead_n": 20_000,
        "overhead_sdk_n": 5_000,
        "overhead_rounds": 3,
        "latency_rounds_per_worker": 50,
        "latency_concurrency": [64, 128, 256, 512],
        "rate_scale": 1.0,
        "resume_n": 5_000,
        "cached_sizes": [100_000, 1_000_000],
        "memory_small": 20_000,
        "memory_big": 1_000_000,
        "memory_seconds": 150,
        "memory_inflight": [64, 1024],
        "import_repeats": 7,
        "cost_n": 10_000,
        "ooc_small": 250_000,
        "ooc_big": 2_000_000,
        "ooc_rerun": 10_000_000,
        "ray_n": 6_000,
        "ray_per_s": 50.0,
        "embed_n": 100_000,
        "embed_rounds": 2,
        "struct_n": 20_000,
        "struct_rounds": 3,
        "operators": operators.SIZES["full"],
        "setops": setops.SIZES["full"],
    },
    "quick": {
        "ordinary_rounds": 1,
        "ordinary_scale": 0.3,
        "overhead_n": 3_000,
        "overhead_sdk_n": 500,
        "overhead_rounds": 1,
        "latency_rounds_per_worker": 10,
        "latency_concurrency": [64, 256],
        "rate_scale": 0.4,
        "rate_cells": [
            "sliding1s-cap50-lat0-c64",
            "sliding1s-cap500-lat50ms-c256",
            "fixed1s-cap50-lat50ms-c64",
            "bucket-cap50-lat0-c256",
        ],
        "resume_n": 1_500,
        "cached_sizes": [100_000],
        "memory_small": 2_000,
        "memory_big": 10_000,
        "memory_seconds": None,
        "memory_inflight": [64, 256],
        "memory_inflight_latency": 0.5,
        "import_repeats": 2,
        "cost_n": 2_000,
        "ooc_small": 50_000,
        "ooc_big": 400_000,
        "ooc_rerun": 1_000_000,
        "ray_n": 2_000,
        "ray_per_s": 50.0,
        "embed_n": 20_000,
        "embed_rounds": 1,
        "struct_n": 3_000,
        "struct_rounds": 1,
        "operators": operators.SIZES["quick"],
        "setops": setops.SIZES["quick"],
    },
    "smoke": {
        "ordinary_rounds": 1,
        "ordinary_scale": 0.05,
        "ordinary_latency": 0.1,
        "overhead_n": 300,
        "overhead_sdk_n": 100,
        "overhead_rounds": 1,
        "latency_rounds_per_worker": 3,
        "latency_concurrency": [64],
        "rate_scale": 0.05,
        "rate_cells": ["sliding1s-cap50-lat0-c64"],
        "rate_extras": False,
        "resume_n": 600,
        "resume_kill_at": [0.5],
        "journal_arms": False,
        "cached_sizes": [5_000],
        "memory_small": 200,
        "memory_big": 1_000,
        "memory_seconds": None,
        "memory_inflight": [8, 32],
        "memory_inflight_latency": 0.1,
        "import_repeats": 1,
        "cost_n": 300,
        "ooc_small": 2_000,
        "ooc_big": 10_000,
        "ooc_rerun": 20_000,
        "ray_n": 150,
        "ray_per_s": 30.0,
        "embed_n": 1_000,
        "embed_batch": 256,
        "embed_rounds": 1,
        "struct_n": 300,
        "struct_rounds": 1,
        "operators": operators.SIZES["smoke"],
        "setops": setops.SIZES["smoke"],
    },
}

SECTIONS = [
    "ordinary",
    "overhead",
    "latency",
    "rate_limits",
    "resume",
    "cached_rerun",
    "memory",
    "import_time",
    "cost",
    "embeddings",
    "struct_input",
    "out_of_core",
    "ray",
    "operators",
    "setops",
]


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode", help="short run (~1 min)")
    mode.add_argument(
        "--smoke",
        action="store_const",
        const="smoke",
        dest="mode",
        help="tiny sizes, only checks that everything runs (used by the test suite)",
    )
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="where results go")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the DuckDB files of the run")
    args = parser.parse_args(argv)
    mode_name = args.mode or "full"
    scale = SCALES[mode_name]
    only = SECTIONS if not args.only else [s.strip() for s in args.only.split(",")]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")

    started = datetime.now(UTC)
    results: dict[str, Any] = {
        "meta": {
            "started": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "mode": mode_name,
            "scale": scale,
            "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": machine_info(),
            "versions": library_versions(),
            "loadavg_start": _loadavg(),
        }
    }
    workdir = Path(tempfile.mkdtemp(prefix="polars-llm-bench-"))
    t0 = time.monotonic()
    runners = {
        "ordinary": lambda: ordinary.run(scale, workdir),
        "overhead": lambda: overhead.run(scale, workdir),
        "latency": lambda: latency.run(scale, workdir),
        "rate_limits": lambda: ratelimits.run(scale, workdir),
        "resume": lambda: resume.run(scale, workdir),
        "cached_rerun": lambda: cached.run(scale, workdir),
        "memory": lambda: memory.run(scale, workdir, _rate_hint(results)),
        "import_time": lambda: importtime.run(scale, workdir),
        "cost": lambda: cost.run(scale, workdir),
        "embeddings": lambda: inputs.run_embeddings(scale, workdir),
        "struct_input": lambda: inputs.run_struct(scale, workdir),
        "out_of_core": lambda: outofcore.run(scale, workdir),
        "ray": lambda: raybench.run(scale, workdir),
        "operators": lambda: operators.section(scale, workdir),
        "setops": lambda: setops.run(scale, workdir),
    }
    try:
        for i, name in enumerate(only, 1):
            start = time.monotonic()
            print(f"[{i}/{len(only)}] {name} ...", file=sys.stderr, flush=True)
            try:
                section = runners[name]()
            except Exception as exc:  # one broken section must not lose the others
                section = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            section["seconds"] = round(time.monotonic() - start, 1)
            results[name] = section
            print(f"[{i}/{len(only)}] {name} done in {section['seconds']} s", file=sys.stderr, flush=True)
    finally:
        if not args.keep_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    results["meta"]["duration_s"] = round(time.monotonic() - t0, 1)
    results["meta"]["loadavg_end"] = _loadavg()
    results["summary"] = [{"section": name, **t} for name in only for t in results[name].get("targets", [])]

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    text = json.dumps(results, indent=1, default=str)
    (args.out / f"{mode_name}-{stamp}.json").write_text(text)
    latest = "latest" if mode_name == "full" else f"latest-{mode_name}"
    (args.out / f"{latest}.json").write_text(text)
    table = markdown(results)
    (args.out / f"{latest}.md").write_text(table)
    print(table)
    print(f"results: {args.out / (latest + '.json')}", file=sys.stderr)
    return 0


def _rate_hint(results: dict[str, Any]) -> float | None:
    section = results.get("overhead")
    if isinstance(section, dict):
        return (section.get("prompts_per_s") or {}).get("map_aiohttp")
    return None


if __name__ == "__main__":
    sys.exit(main())
