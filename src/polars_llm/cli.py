"""The ``polars-llm`` command line.

polars-llm demo                       # the main job, on the built-in simulator
polars-llm sim --port 8000            # an OpenAI-compatible simulator on 127.0.0.1
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ._config import DEFAULT_CACHE_PATH

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    summary = run_demo(
        rows=args.rows,
        output=Path(args.output),
        cache=Path(args.cache),
        latency=args.latency,
        concurrency=args.concurrency,
        progress=not args.quiet,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_sim(args: argparse.Namespace) -> int:
    from . import sim

    return sim.run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="polars-llm", description="Run an LLM over a column of prompts.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="label a few thousand reviews on the built-in simulator")
    demo.add_argument("--rows", type=int, default=3000)
    demo.add_argument("--output", default="demo_results.parquet")
    demo.add_argument("--cache", default=str(DEFAULT_CACHE_PATH))
    demo.add_argument("--latency", type=float, default=0.02, help="simulated latency in seconds")
    demo.add_argument("--concurrency", type=int, default=64)
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.set_defaults(func=_cmd_demo)

    simp = sub.add_parser("sim", help="serve the OpenAI-compatible simulator")
    from . import sim

    sim.add_arguments(simp)
    simp.set_defaults(func=_cmd_sim)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(
            "interrupted: finished rows are kept in the cache; run the same command again to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
