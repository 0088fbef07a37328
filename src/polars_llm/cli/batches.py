"""``polars-llm batches``: the batches a cache remembers; ``polars-llm batches cancel ID`` cancels one."""

from __future__ import annotations

import argparse
import json
from typing import Any

import polars as pl

from .._batch import batches, cancel_batch
from .._config import DEFAULT_CACHE_PATH
from .._cost import usd
from .store import existing_cache

__all__ = ["add_batches_arguments", "cmd_batches", "format_batches"]


def _common(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--cache", default=default, help=f"cache file (default {DEFAULT_CACHE_PATH})")
    p.add_argument(
        "--api-key-env",
        default=default if default is argparse.SUPPRESS else "OPENROUTER_API_KEY",
        metavar="NAME",
        help="environment variable (or ./.env entry) holding the API key (default: OPENROUTER_API_KEY)",
    )


def add_batches_arguments(p: argparse.ArgumentParser) -> None:
    _common(p, str(DEFAULT_CACHE_PATH))
    p.add_argument("--refresh", action="store_true", help="ask the provider for the status of live batches")
    p.add_argument("--json", action="store_true", help="print the batches as JSON")
    sub = p.add_subparsers(dest="batches_command", metavar="{cancel}")
    cancel = sub.add_parser("cancel", help="cancel a batch at the provider", allow_abbrev=False)
    cancel.add_argument("batch_id", metavar="ID", help="the batch id (see `polars-llm batches`)")
    _common(cancel, argparse.SUPPRESS)  # also accepted after `cancel ID`


def format_batches(frame: pl.DataFrame) -> str:
    """A table of :func:`polars_llm.batches` for the terminal, each column as wide as its longest cell.

    >>> print(format_batches(pl.DataFrame({"batch_id": ["batch_0123456789abcdef"], "live": [True],
    ...     "status": ["in_progress"], "requests": [10], "completed": [4], "failed": [0], "rows_done": [None],
    ...     "rows_failed": [None], "rows_requeued": [None], "cost": [0.5], "submitted_at": [None],
    ...     "message": [None]})))
    batch                   status       live  requests  provider ok/failed  collected ok/failed/back  cost
    batch_0123456789abcdef  in_progress  yes         10  4/0                 -                         $0.500
    """
    if frame.height == 0:
        return "no batches in this cache"
    header = [
        "batch",
        "status",
        "live",
        "requests",
        "provider ok/failed",
        "collected ok/failed/back",
        "cost",
    ]
    right = {3}  # numbers align right
    rows: list[tuple[list[str], str | None]] = []
    for r in frame.iter_rows(named=True):
        collected = (
            "-" if r["rows_done"] is None else f"{r['rows_done']}/{r['rows_failed']}/{r['rows_requeued']}"
        )
        cells = [
            str(r["batch_id"]),
            r["status"] or "-",
            "yes" if r["live"] else "no",
            f"{r['requests'] or 0}",
            f"{r['completed'] or 0}/{r['failed'] or 0}",
            collected,
            "" if r["cost"] is None else usd(r["cost"]),
        ]
        rows.append((cells, r["message"]))
    widths = [max(len(h), *(len(cells[i]) for cells, _ in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    lines = [line(header)]
    for cells, message in rows:
        lines.append(line(cells))
        if message:
            lines.append(f"  {message}")
    return "\n".join(lines)


def cmd_batches(args: argparse.Namespace) -> int:
    path = existing_cache(args.cache)
    if args.batches_command == "cancel":
        row = cancel_batch(args.batch_id, cache=path, api_key_env=args.api_key_env)
        if not row["live"]:
            print(f"batch {row['batch_id']} was already collected ({row['status']}); nothing to cancel")
        else:
            print(
                f"batch {row['batch_id']}: {row['status']}. The next batch-mode run of the same call "
                "collects its finished answers (and submits the rest again)"
            )
        return 0
    frame = batches(path, refresh=args.refresh, api_key_env=args.api_key_env)
    if args.json:
        print(json.dumps(frame.to_dicts(), indent=2, default=str))
    else:
        print(format_batches(frame))
    return 0
