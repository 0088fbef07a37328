"""``polars-llm run``: a file of prompts to a file of results, on the engine and store of ``.llm.map``.

The input is scanned lazily and the output written with a Polars sink, so columns other than the prompt
column stream through; the distinct prompts are mapped in one call (each sent once, finished ones read
from the cache) by the function behind ``.llm.map``, then joined back onto the streamed rows. The output
is written to a temporary file beside ``--output`` and renamed when complete, so an interrupted run never
leaves a half-written file; run the same command again to resume.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Final

import polars as pl

from .._config import DEFAULT_CACHE_PATH, EMBED_ONLY, MapConfig, option_fields
from .._pipeline import estimate_series, map_chunks, map_series, mode_of
from .errors import CLIError
from .files import file_format, json_text, open_input, print_summary, read_chunks, scan_input, stream_output
from .options import add_key_and_column_flags, add_option_flags, api_key_from_env, config_from, load_schema

__all__ = ["add_run_arguments", "cmd_estimate", "cmd_run", "struct_columns"]


def add_run_arguments(p: argparse.ArgumentParser, *, output: bool = True) -> None:
    p.add_argument("input", metavar="INPUT", help="prompts file: .csv, .parquet, .jsonl or .ndjson")
    p.add_argument("--column", required=True, help="name of the prompt column")
    if output:
        p.add_argument(
            "--output", "-o", required=True, help="results file: .csv, .parquet, .jsonl or .ndjson"
        )
    add_option_flags(p, skip=EMBED_ONLY)  # `polars-llm embed` has --dimensions and --batch-size
    # hand-written flags standing for options (their `cli` metadata names them)
    p.add_argument("--schema", metavar="MODULE:MODEL", help="pydantic model for structured output "
                   "(response_model): module:Model or file.py:Model")  # fmt: skip
    p.add_argument(
        "--cache", default=str(DEFAULT_CACHE_PATH), help=f"cache file (default {DEFAULT_CACHE_PATH})"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar (progress=False)")
    p.add_argument("--batch", action="store_true", help="short for --mode batch (the provider's batch API)")
    p.add_argument(
        "--price",
        nargs=2,
        type=float,
        metavar=("IN", "OUT"),
        help="USD per million input and output tokens (default: the provider's model list)",
    )
    add_key_and_column_flags(p, result="result", what="result")
    struct = p.add_argument_group(
        "per-row fields (struct input; a null cell means the option applies)",
    )
    for field, what in STRUCT_FLAGS.items():
        struct.add_argument(f"--{field}-column", metavar="COL", default=None, help=what)


# The struct-input fields the CLI takes from columns (flag --<name>-column), and what they hold.
STRUCT_FLAGS: Final = {
    "system": "column of per-row system prompts",
    "image": "column of image URLs or local file paths (String, or List(String) in Parquet/JSONL)",
    "messages": "column of earlier turns: List(Struct{role, content}) in Parquet/JSONL, or JSON text",
    "model": "column of per-row model names (--model may then be left out if every row has one)",
}
_FIELD_OF_FLAG: Final = {"system": "system", "image": "images", "messages": "messages", "model": "model"}


def struct_columns(args: argparse.Namespace) -> dict[str, str]:
    """``{struct field: input column}`` from the ``--<field>-column`` flags given."""
    given = {flag: getattr(args, f"{flag}_column", None) for flag in STRUCT_FLAGS}
    return {_FIELD_OF_FLAG[flag]: col for flag, col in given.items() if col is not None}


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The run's options from parsed arguments (the API key is read from the environment)."""
    options = {
        f.name: getattr(args, f.name)
        for f in option_fields()
        if f.metadata["cli"] is True and f.name not in EMBED_ONLY
    }
    options["response_model"] = load_schema(args.schema) if args.schema else None
    options["cache"] = Path(args.cache)
    options["progress"] = not args.quiet
    options["price"] = tuple(args.price) if args.price else None
    if args.batch:
        options["mode"] = "batch"
    options["api_key"] = api_key_from_env(args.api_key_env)
    return options


def _field(name: str, column: str, dtype: pl.DataType) -> pl.Expr:
    if name == "messages" and dtype == pl.String:  # CSV: the turns as JSON text
        return pl.col(column).str.json_decode(pl.List(pl.Struct({"role": pl.String, "content": pl.String})))
    return pl.col(column)


def _source(column: str, fields: dict[str, str], schema: pl.Schema) -> pl.Expr:
    """The mapped input: the prompt column, or a struct of it and the per-row field columns."""
    if not fields:
        return pl.col(column)
    parts = {"prompt": pl.col(column), **{f: _field(f, c, schema[c]) for f, c in fields.items()}}
    return pl.struct(**parts).alias(column)


def _batch_answers(lf: pl.LazyFrame, source: pl.Expr, cfg: MapConfig, names: dict[str, str]) -> pl.DataFrame:
    """Batch mode does not stream: its batches hold a whole run's rows, submitted before any is waited for."""
    frame = lf.collect()
    answers = map_series(frame.select(source).to_series(), cfg).struct.unnest()
    return frame.hstack(answers.select(*names).rename(names))


def cmd_run(args: argparse.Namespace) -> int:
    """Run the ``run`` command; raises :class:`CLIError` for the user's mistakes."""
    fields = struct_columns(args)
    lf, target = open_input(args, list(fields.values()))
    cfg = config_from(args, _options(args), model_required="model" not in fields)
    schema = lf.collect_schema()
    taken = set(cfg.include) & {*schema.names(), args.result_column, args.status_column}
    if taken:
        raise CLIError(f"--include would add column(s) {', '.join(sorted(taken))} that the input already has")
    names = {"result": args.result_column, "status": args.status_column, **{n: n for n in cfg.include}}
    fmt_out = file_format(target, "output")
    source = _source(args.column, fields, schema)
    if not mode_of(cfg).streams:  # batch mode: every row's batch first, then (with --wait) the answers
        chunks = iter([_batch_answers(lf, source, cfg, names)])
    else:  # streamed: cfg.chunk_rows rows at a time from the input, through one session, to the output file
        chunks = map_chunks(read_chunks(lf, rows=cfg.chunk_rows), source, cfg, names)
    if cfg.response_model is not None and fmt_out == "csv":  # CSV has no nested columns: keep the JSON text
        chunks = (c.with_columns(json_text(args.result_column)) for c in chunks)
    target = target.expanduser().absolute()
    stop = stream_output(chunks, target, fmt_out)
    print_summary(target, fmt_out, args.status_column, cfg)
    if stop is not None:
        raise stop  # exit 1 with the budget message, after the output with what finished is written
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    """``polars-llm estimate``: what ``run`` would send and cost, without sending a request."""
    source = Path(args.input)
    lf = scan_input(source, file_format(source, "input"), args.column)
    prompts = lf.select(args.column).collect().get_column(args.column)
    print(estimate_series(prompts, config_from(args, _options(args))))
    return 0
