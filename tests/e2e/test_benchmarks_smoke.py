"""The benchmark command runs end to end (tiny sizes), so it cannot rot. No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.__main__ import SECTIONS  # noqa: E402  (the benchmark package sits beside the tests)


def _benchmark(module: str, args: list[str], *, timeout: float) -> None:
    """``python -m <module> <args>`` from the repository root; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


# Every section at tiny size took ~4 min here on a quiet machine (15 sections, each case in its own
# process, the resume section's 12 kills among them; the operators and setops sections ~30 s of it):
# the bound is for a hang, not for speed.
@pytest.mark.timeout(960)
def test_benchmark_smoke_run_writes_every_section(tmp_path: Path) -> None:
    _benchmark("benchmarks", ["--smoke", "--out", str(tmp_path)], timeout=900)
    results = json.loads((tmp_path / "latest-smoke.json").read_text())
    meta = results["meta"]
    assert meta["mode"] == "smoke"
    assert meta["machine"]["cpu_count"] >= 1 and meta["machine"]["python"]
    assert {"polars", "duckdb", "polars-llm-map"} <= set(meta["versions"])
    for name in SECTIONS:
        section = results[name]
        assert "error" not in section, f"{name}: {section.get('error')}\n{section.get('traceback', '')}"
        assert section["targets"], name
        for target in section["targets"]:
            assert target["measured"] is not None, (name, target)
    assert results["overhead"]["ratios"]["map_aiohttp/bare_aiohttp"] is not None
    # correctness is checked even at smoke size: every arm answered every prompt right
    for arm, runs in results["overhead"]["runs"].items():
        for run in runs:
            assert run["errors"] == 0 and run["wrong"] == 0, (arm, run)
    assert {(c["path"], c["latency"]) for c in results["resume"]["cases"]} == {
        (path, latency) for path in ("eager", "streamed") for latency in (0.0, 0.02)
    }
    for case in results["resume"]["cases"]:
        assert case["complete_and_correct"] and case["first_run"]["killed"], case
    for section in ("embeddings", "struct_input"):
        for arm, runs in results[section]["runs"].items():
            for run in runs:
                assert run["errors"] == 0 and run["wrong"] == 0, (section, arm, run)
    packed = results["setops"]["join"]["packed"]  # pair checks through filter's machinery, packed
    assert packed["same_pairs"] and packed["rerun_with_pack1_requests"] == 0, packed
    for arm in results["operators"]["packing"].values():
        assert arm["right"] == 1.0, arm
    for run in results["cached_rerun"]["runs"]:
        assert run["requests_sent"] == 0 and run["done"] == run["n"] and run["wrong"] == 0
    assert [s["section"] for s in results["summary"]] == [
        name for name in SECTIONS for _ in results[name]["targets"]
    ]
    table = (tmp_path / "latest-smoke.md").read_text()
    assert "| Section | Measure | Measured | Target |" in table


@pytest.mark.timeout(300)
def test_the_two_trees_comparison_runs_against_this_checkout(tmp_path: Path) -> None:
    """``python -m benchmarks.trees OTHER``, with this checkout as the other tree: every arm answers every
    prompt right and each arm's ratio comes out (a rate and a CPU figure; their values are not asserted)."""
    work, rounds = ["--workdir", str(tmp_path / "work")], ["--rounds", "1", "--n", "64"]
    _benchmark("benchmarks.trees", [str(ROOT), *rounds, *work, "--out", str(tmp_path)], timeout=280)
    (path,) = tmp_path.glob("trees-*.json")
    results = json.loads(path.read_text())
    assert results["meta"]["trees"]["this"]["commit"] == results["meta"]["trees"]["other"]["commit"]
    for arm, runs in results["runs"].items():
        assert len(runs) == 1 and runs[0]["errors"] == 0 and runs[0]["wrong"] == 0, (arm, runs)
    assert set(results["ratios"]) == {
        f"{arm}/bare_aiohttp" for arm in ("map_this", "map_this_nojournal", "map_other")
    }
    for ratio in results["ratios"].values():
        assert ratio["best"] is not None and ratio["cpu_least"] is not None, ratio
