"""Draw docs/images/rate-limited-run.png: the rate a run keeps against a provider cap that changes.

``uv run --group docs python scripts/plot_rate_limits.py --measure`` runs the benchmark's cap-change case
(``benchmarks.ratelimits._cap_change``: a 1 s sliding cap of 100 requests/s, halved after a third of the
run and restored after two thirds; ~50 s) and saves its result to
``benchmarks/results/cap_change-<time>.json``; without ``--measure`` the newest such file is drawn.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
IMAGE = ROOT / "docs" / "images" / "rate-limited-run.png"


def measure() -> Path:
    sys.path.insert(0, str(ROOT))
    from benchmarks.ratelimits import _cap_change

    with tempfile.TemporaryDirectory() as work:
        res = _cap_change(1.0, Path(work))
    out = RESULTS / f"cap_change-{time.strftime('%Y%m%dT%H%MZ', time.gmtime())}.json"
    out.write_text(json.dumps({"command": "python scripts/plot_rate_limits.py --measure", **res}, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")
    return out


def draw(source: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = json.loads(source.read_text())
    rows = res["timeline"]
    busy = [i for i, row in enumerate(rows) if row[1] > 0]  # from the first answer to the last
    rows = rows[max(0, busy[0] - 1) : busy[-1] + 1]
    t0 = rows[0][0]
    t, admitted, refused, cap = zip(*[(r[0] - t0, *r[1:]) for r in rows], strict=True)
    fig, ax = plt.subplots(figsize=(7.5, 3.2), dpi=110)
    ax.step(t, cap, where="post", color="#888", linestyle="--", label="the provider's cap")
    ax.plot(t, admitted, color="#1f77b4", label="answered per second (last 1 s)")
    ax.plot(t, refused, color="#d62728", label="429s per second")
    ax.set_xlabel("seconds into the run")
    ax.set_ylabel("requests / s")
    share = res.get("share_429")
    back = ", ".join(f"{c['seconds_to_0_9']} s" for c in res.get("changes", []))
    ax.set_title(
        f"No rpm_limit set: the run follows a cap that halves, then doubles\n"
        f"429s {share:.1%} of requests; back to ≥ 0.9 × the new cap in {back}",
        fontsize=9,
    )
    ax.set_ylim(0, max(cap) * 1.25)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    IMAGE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMAGE)
    print(f"wrote {IMAGE.relative_to(ROOT)} from {source.relative_to(ROOT)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="run the cap-change case first (~50 s)")
    args = parser.parse_args()
    source = measure() if args.measure else max(RESULTS.glob("cap_change-*.json"))
    draw(source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
