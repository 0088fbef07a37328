"""The ``polars-llm`` command line.

polars-llm run prompts.csv --column prompt --output results.parquet   # a file of prompts to results
polars-llm estimate prompts.csv --column prompt --model M [--price IN OUT]  # tokens and cost, sends nothing
polars-llm embed texts.csv --column text --model M --output vectors.parquet  # a file of texts to vectors
polars-llm status                     # what the cache holds: counts, tokens, cost, errors
polars-llm export --output all.jsonl  # the cache's rows as JSON Lines or Parquet
polars-llm batches                    # the batches of batch mode (--mode batch); `batches cancel ID`
polars-llm demo                       # the main job, on the built-in simulator
polars-llm sim --port 8000            # an OpenAI-compatible simulator on 127.0.0.1

Exit codes: 0 success, 1 the run failed (e.g. the provider refused the key, the cache is locked),
2 bad arguments or input (missing key, unreadable input, missing column), 130 interrupted (finished
rows are kept in the cache; run the same command again to resume).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import polars as pl

from .._config import DEFAULT_CACHE_PATH
from ..exceptions import ConfigError, PolarsLLMError
from .batches import add_batches_arguments, cmd_batches
from .embed import add_embed_arguments, cmd_embed
from .errors import EXIT_FAILED, EXIT_USAGE, CLIError
from .run import add_run_arguments, cmd_estimate, cmd_run
from .store import add_export_arguments, add_status_arguments, cmd_export, cmd_status

__all__ = ["build_parser", "main"]

_KEY_FLAG = re.compile(r"^--(openrouter[-_])?(api[-_])?key(=|$)|^--api[-_]key(=|$)")


def _cmd_demo(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    summary = run_demo(
        rows=args.rows,
        output=Path(args.output),
        cache=Path(args.cache),
        latency=args.latency,
        concurrency=args.concurrency,
        progress=not args.quiet,
        real=args.real,
        rpm_limit=args.rpm_limit,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_sim(args: argparse.Namespace) -> int:
    from .. import sim

    return sim.run_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polars-llm", description="Run an LLM over a column of prompts.", allow_abbrev=False
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        allow_abbrev=False,
        help="send every row of a prompts file to the model and write the results",
        description="Send the --column of INPUT to the model; write INPUT's columns plus result and status "
        "to --output. Finished rows are cached (--cache): rerun the same command to resume.",
    )
    add_run_arguments(run)
    run.set_defaults(func=cmd_run)

    estimate = sub.add_parser(
        "estimate",
        allow_abbrev=False,
        help="what `run` would send and cost, without sending a request",
        description="Count the rows and unique prompts of INPUT's --column, what the cache already holds, "
        "the tokens expected (learned from earlier answers in the cache) and their price (--price, else the "
        "provider's model list). Sends no completion request.",
    )
    add_run_arguments(estimate, output=False)
    estimate.set_defaults(func=cmd_estimate)

    embed = sub.add_parser(
        "embed",
        allow_abbrev=False,
        help="embed every row of a texts file and write the vectors",
        description="Embed the --column of INPUT (POST /embeddings, --batch-size texts per request); write "
        "INPUT's columns plus the vectors and status to --output. Finished vectors are cached (--cache): "
        "rerun the same command to resume.",
    )
    add_embed_arguments(embed)
    embed.set_defaults(func=cmd_embed)

    status = sub.add_parser(
        "status", allow_abbrev=False, help="counts by status and model, tokens, cost, errors of a cache"
    )
    add_status_arguments(status)
    status.set_defaults(func=cmd_status)

    export = sub.add_parser(
        "export", allow_abbrev=False, help="write a cache's rows to JSON Lines or Parquet"
    )
    add_export_arguments(export)
    export.set_defaults(func=cmd_export)

    batches = sub.add_parser(
        "batches",
        allow_abbrev=False,
        help="the batches of batch mode in a cache (live or collected); `batches cancel ID` cancels one",
    )
    add_batches_arguments(batches)
    batches.set_defaults(func=cmd_batches)

    demo = sub.add_parser("demo", help="label a few thousand reviews on the built-in simulator")
    demo.add_argument("--rows", type=int, default=3000)
    demo.add_argument("--output", default="demo_results.parquet")
    demo.add_argument("--cache", default=str(DEFAULT_CACHE_PATH))
    demo.add_argument("--latency", type=float, default=0.02, help="simulated latency in seconds")
    demo.add_argument("--concurrency", type=int, default=64)
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    demo.add_argument(
        "--real",
        action="store_true",
        help="use the provider from MODEL / OPENROUTER_API_KEY (and POLARS_LLM_BASE_URL), not the simulator",
    )
    demo.add_argument("--rpm-limit", type=float, default=None, help="client-side requests/min (with --real)")
    demo.set_defaults(func=_cmd_demo)

    simp = sub.add_parser("sim", help="serve the OpenAI-compatible simulator")
    from .. import sim

    sim.add_arguments(simp)
    simp.set_defaults(func=_cmd_sim)
    return parser


_CLI_WORDS: Final = (
    ("pass cache=<other path>", "pass --cache <other path>"),
    ("Pass cache=<other path>", "Pass --cache <other path>"),
    ("pass cache=<its path>", "pass --cache <its path>"),
    ("Raise max_cost", "Raise --max-cost"),
    ("raise max_wait", "raise --max-wait"),
    ("run it again to continue", "run the same command again to continue"),
    ("run the same code again", "run the same command again"),
)


def _cli_words(message: str) -> str:
    """An error message of the library as a command-line user reads it: flags, not keyword arguments.

    >>> _cli_words("the cache x is locked by y; finish it, or pass cache=<other path>.")
    'the cache x is locked by y; finish it, or pass --cache <other path>.'
    """
    for python, flag in _CLI_WORDS:
        message = message.replace(python, flag)
    return message


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (also for argument errors and ``--help``)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(_KEY_FLAG.match(arg) for arg in argv):
        print(
            "polars-llm: error: API keys are never taken as arguments (they would land in shell history); "
            "set OPENROUTER_API_KEY in the environment or ./.env, or name another variable with "
            "--api-key-env",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    prog = f"polars-llm {args.command}"
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.code
    except ConfigError as exc:
        print(f"{prog}: error: {_cli_words(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except PolarsLLMError as exc:
        print(f"{prog}: error: {_cli_words(str(exc))}", file=sys.stderr)
        return EXIT_FAILED
    except (pl.exceptions.PolarsError, OSError) as exc:
        print(f"{prog}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(
            "interrupted: finished rows are kept in the cache; run the same command again to resume",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
