"""``polars-llm embed``: a file of texts to a file with their vectors, on the engine and store of llm.embed.

Like ``polars-llm run``: the input streams through, the distinct texts are embedded in one call (vectors
already in the cache are not asked again) and joined back in row order; the output is written to a
temporary file and renamed when complete. Parquet and JSON Lines hold the vectors as lists; CSV holds them
as JSON text (``[0.1, -0.2, ...]``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import polars as pl

from .._config import CHAT_ONLY, DEFAULT_CACHE_PATH, option_fields
from .._pipeline import embed_series
from .errors import CLIError
from .files import file_format, open_input, write_output
from .options import add_key_and_column_flags, add_option_flags, api_key_from_env, config_from

__all__ = ["add_embed_arguments", "cmd_embed"]


def add_embed_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="INPUT", help="texts file: .csv, .parquet, .jsonl or .ndjson")
    p.add_argument("--column", required=True, help="name of the text column")
    p.add_argument("--output", "-o", required=True, help="output file: .parquet, .jsonl/.ndjson or .csv")
    add_option_flags(p, skip=CHAT_ONLY)
    p.add_argument(
        "--cache", default=str(DEFAULT_CACHE_PATH), help=f"cache file (default {DEFAULT_CACHE_PATH})"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar (progress=False)")
    add_key_and_column_flags(p, result="embedding", what="vector")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    options = {
        f.name: getattr(args, f.name)
        for f in option_fields()
        if f.metadata["cli"] is True and f.name not in CHAT_ONLY
    }
    options["cache"] = Path(args.cache)
    options["progress"] = not args.quiet
    options["api_key"] = api_key_from_env(args.api_key_env)
    return options


def cmd_embed(args: argparse.Namespace) -> int:
    """Run the ``embed`` command; raises :class:`~polars_llm.cli.errors.CLIError` for the user's mistakes."""
    lf, target = open_input(args)
    cfg = config_from(args, _options(args))
    column, result = args.column, args.result_column
    texts = lf.select(pl.col(column).unique(maintain_order=True)).collect().get_column(column)
    taken = set(cfg.include) & {*lf.collect_schema().names(), result, args.status_column}
    if taken:
        raise CLIError(f"--include would add column(s) {', '.join(sorted(taken))} that the input already has")
    answers = embed_series(texts, cfg)
    table = pl.DataFrame(
        [
            texts,
            answers.struct.field("result").alias(result),
            answers.struct.field("status").alias(args.status_column),
            *(answers.struct.field(name) for name in cfg.include),  # --include error,usage,…
        ]
    )
    out = lf.join(table.lazy(), on=column, how="left", nulls_equal=True, maintain_order="left")
    if file_format(target, "output") == "csv":  # CSV has no list columns: the vector as JSON text
        values = pl.col(result).cast(pl.List(pl.Float32)).cast(pl.List(pl.String)).list.join(", ")
        out = out.with_columns(pl.format("[{}]", values).alias(result))
    write_output(out, target, args.status_column, cfg)
    return 0
