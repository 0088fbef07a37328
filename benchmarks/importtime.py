"""7. Import time of ``polars_llm`` over ``import polars``, in fresh interpreters (median of several).

``python -X importtime`` then names the heaviest packages ``import polars_llm`` pulls in beyond Polars.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from ._common import ROOT

__all__ = ["run"]

_CODE = (
    "import time; t0 = time.perf_counter(); import polars; t1 = time.perf_counter(); "
    "import polars_llm; t2 = time.perf_counter(); print(t1 - t0, t2 - t1)"
)


def _heaviest(limit: int = 8) -> list[dict[str, Any]]:
    """Top-level packages first imported by ``import polars_llm`` (after Polars), by cumulative time."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import polars; import polars_llm"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    lines = done.stderr.splitlines()
    start = next((i for i, line in enumerate(lines) if line.endswith("| polars")), -1)
    rows = []
    for line in lines[start + 1 :]:
        parts = line.split("|")
        if len(parts) != 3 or not parts[0].startswith("import time:"):
            continue
        name = parts[2].strip()
        try:
            cumulative = int(parts[1])
        except ValueError:
            continue
        if "." not in name and name != "polars_llm":
            rows.append({"module": name, "cumulative_ms": round(cumulative / 1000, 1)})
    rows.sort(key=lambda r: -r["cumulative_ms"])
    return rows[:limit]


def run(scale: dict[str, Any], workdir: Path) -> dict[str, Any]:
    polars_s, extra_s = [], []
    for _ in range(scale["import_repeats"]):
        done = subprocess.run(
            [sys.executable, "-c", _CODE], capture_output=True, text=True, cwd=ROOT, check=True
        )
        a, b = (float(x) for x in done.stdout.split())
        polars_s.append(a)
        extra_s.append(b)
    extra = statistics.median(extra_s)
    return {
        "params": {"repeats": scale["import_repeats"]},
        "import_polars_s": round(statistics.median(polars_s), 3),
        "import_polars_llm_after_polars_s": round(extra, 3),
        "samples_s": [round(x, 3) for x in extra_s],
        "heaviest_dependencies": _heaviest(),
        "targets": [
            {
                "name": "import polars_llm after import polars (s)",
                "measured": round(extra, 3),
                "target": "report",
                "met": None,
            }
        ],
    }
