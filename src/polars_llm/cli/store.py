"""``polars-llm status`` and ``polars-llm export``: read the cache a run left behind."""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from .._compat import export_rows, is_results_store, read_results
from .._config import DEFAULT_CACHE_PATH
from .._store import Store
from .errors import CLIError

__all__ = ["add_export_arguments", "add_status_arguments", "cmd_export", "cmd_status", "format_summary"]

_STATUSES: Final = ("done", "failed", "pending")
_EXPORT_EXT: Final[dict[str, Literal["jsonl", "parquet"]]] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def add_status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache", default=str(DEFAULT_CACHE_PATH), help=f"cache file (default {DEFAULT_CACHE_PATH})"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--cache", default=str(DEFAULT_CACHE_PATH), help=f"cache file (default {DEFAULT_CACHE_PATH})"
    )
    p.add_argument("--format", choices=("jsonl", "parquet"), help="output format (default: from --output)")
    p.add_argument("--output", "-o", required=True, help="file to write")
    p.add_argument("--status", choices=_STATUSES, help="only rows with this status (default: all)")


def existing_cache(cache: str) -> Path:
    path = Path(cache).expanduser().absolute()
    if not path.exists():
        raise CLIError(f"no cache at {path}: run `polars-llm run` first, or pass --cache PATH")
    if not path.is_file():
        raise CLIError(f"the cache path {path} is not a file")
    return path


def _counts(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v:,}" for k, v in counts.items()) or "(empty)"


def _usd(value: float | None) -> str:
    return "unknown" if value is None else f"${value:.6f}"


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable text of :meth:`Store.summary`. A cost nobody reported or priced is "unknown".

    >>> print(format_summary({"path": "c.duckdb", "schema_version": 3, "total": 3,
    ...     "by_status": {"done": 2, "failed": 1}, "by_model": {"m": {"done": 2, "failed": 1}},
    ...     "tokens_in": 10, "tokens_out": 20, "tokens_reasoning": 5, "tokens_cached": 0, "cost": 0.5,
    ...     "cost_by_model": {"m": 0.5}, "cost_by_day": {"2026-12-01": 0.5},
    ...     "error_kinds": {"rate_limit": 1}, "last_finished_at": None}))
    cache: c.duckdb (schema v3)
    rows: 3  done=2 failed=1
    by model:
      m: done=2 failed=1  cost: $0.500000
    tokens: in=10 out=20 (reasoning 5) cached-in=0
    cost: $0.500000
    cost by day:
      2026-12-01: $0.500000
    errors (failed rows): rate_limit=1
    """
    lines = [
        f"cache: {s['path']} (schema v{s['schema_version']})",
        f"rows: {s['total']:,}  {_counts(s['by_status'])}",
    ]
    by_cost = s.get("cost_by_model", {})
    if s["by_model"]:
        lines.append("by model:")
        lines.extend(
            f"  {model}: {_counts(counts)}  cost: {_usd(by_cost.get(model))}"
            for model, counts in s["by_model"].items()
        )
    lines.append(
        f"tokens: in={s['tokens_in']:,} out={s['tokens_out']:,} (reasoning {s.get('tokens_reasoning', 0):,}) "
        f"cached-in={s.get('tokens_cached', 0):,}"
    )
    lines.append(f"cost: {_usd(s['cost'])}")
    if s.get("cost_by_day"):
        lines.append("cost by day:")
        lines.extend(f"  {day}: {_usd(cost)}" for day, cost in s["cost_by_day"].items())
    if s["error_kinds"]:
        lines.append(f"errors (failed rows): {_counts(s['error_kinds'])}")
    if s["last_finished_at"] is not None:
        last = s["last_finished_at"]
        lines.append(f"last finished: {last.isoformat(sep=' ') if isinstance(last, datetime) else last} UTC")
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    path = existing_cache(args.cache)
    if is_results_store(path):
        rows = read_results(path)
        counts = dict(rows.group_by("status").len().sort("status").iter_rows())
        summary: dict[str, Any] = {
            "path": str(path),
            "kind": "results",
            "total": rows.height,
            "by_status": counts,
        }
        print(
            json.dumps(summary, indent=2)
            if args.json
            else f"results store: {path}\nrows: {rows.height:,}  {_counts(counts)}"
        )
        return 0
    with Store.open(path) as store:
        summary = store.summary()
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(format_summary(summary))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    path = existing_cache(args.cache)
    out = Path(args.output).expanduser().absolute()
    fmt = args.format or _EXPORT_EXT.get(out.suffix.lower())
    if fmt is None:
        raise CLIError(f"cannot tell the export format of {args.output!r}; pass --format jsonl|parquet")
    n = export_rows(path, out, format=fmt, status=args.status)
    print(f"exported {n:,} rows to {out}")
    return 0
