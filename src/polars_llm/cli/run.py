"""``polars-llm run``: a file of prompts to a file of results, on the engine and store of ``.llm.map``.

The input is scanned lazily and the output written with a Polars sink, so columns other than the prompt
column stream through; the distinct prompts are mapped in one call (each sent once, finished ones read
from the cache) by the function behind ``.llm.map``, then joined back onto the streamed rows. The output
is written to a temporary file beside ``--output`` and renamed when complete, so an interrupted run never
leaves a half-written file; run the same command again to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import polars as pl
from pydantic import BaseModel

from .._config import (
    DEFAULT_CACHE_PATH,
    EMBED_ONLY,
    MapConfig,
    env_value,
    option_fields,
    resolve_config,
)
from .._pipeline import estimate_series, map_chunks, map_series, mode_of
from ..exceptions import BudgetExceededError, ConfigError
from .files import ChunkWriter, FileFormat, read_chunks

__all__ = [
    "EXIT_FAILED",
    "EXIT_USAGE",
    "NOT_ON_CLI",
    "CLIError",
    "add_key_and_column_flags",
    "add_option_flags",
    "add_run_arguments",
    "cmd_estimate",
    "cmd_run",
    "config_from",
    "file_format",
    "open_input",
    "struct_columns",
    "write_output",
]

EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
_EXTENSIONS: Final[dict[str, FileFormat]] = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "ndjson",
    ".ndjson": "ndjson",
}
_ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_STRINGY: Final = (pl.String, pl.Categorical, pl.Null)


class CLIError(Exception):
    """A message for the user and the exit code to leave with."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def file_format(path: Path, what: str) -> FileFormat:
    """The format of ``path`` from its extension.

    >>> file_format(Path("a.JSONL"), "input")
    'ndjson'
    """
    fmt = _EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(_EXTENSIONS))
        raise CLIError(
            f"cannot tell the {what} format of {str(path)!r} from its extension (use one of {known})"
        )
    return fmt


# Options of MapConfig without a `polars-llm run` flag, and why: a key on the command line lands in the shell
# history (use --api-key-env), and a worker is a Python callable.
NOT_ON_CLI: Final = frozenset(f.name for f in option_fields() if f.metadata["cli"] is False)


def _parser_for(f: dataclasses.Field[Any]) -> Callable[[str], Any]:
    """Text → value for an option's flag, checked by the option's own check."""
    kind = str(f.type)  # the annotation's text, e.g. "int", "float | None", "Mapping[str, Any] | None"
    parse: Callable[[str], Any] = str
    if kind.startswith("Mapping"):
        parse = json.loads
    elif kind.startswith("int"):
        parse = int
    elif kind.startswith("float"):
        parse = float
    check = f.metadata["check"]

    def convert(text: str) -> Any:
        try:
            value = parse(text)
            return check(f.name, value) if check is not None else value
        except (ValueError, ConfigError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def add_option_flags(p: argparse.ArgumentParser, skip: frozenset[str] = frozenset()) -> None:
    """One ``--flag`` per :class:`~polars_llm.MapConfig` option declared ``cli=True`` (but ``skip``)."""
    for f in option_fields():
        if f.metadata["cli"] is not True or f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        shown = "none" if f.default == () else f.default  # an empty tuple (include) reads as nothing
        help_text = f"{f.metadata['doc']} (default: {shown})"
        if f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            p.add_argument(flag, dest=f.name, type=_parser_for(f), default=f.default, help=help_text)


def add_key_and_column_flags(p: argparse.ArgumentParser, *, result: str, what: str) -> None:
    """``--api-key-env`` and the names of the added columns (``--result-column`` defaults to ``result``)."""
    p.add_argument(
        "--api-key-env",
        default="OPENROUTER_API_KEY",
        metavar="NAME",
        help="environment variable (or ./.env entry) holding the API key (default: OPENROUTER_API_KEY)",
    )
    p.add_argument("--result-column", default=result, help=f"name of the added {what} column")
    p.add_argument("--status-column", default="status", help="name of the added status column")


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


def load_schema(spec: str) -> type[BaseModel]:
    """``module:Model`` or ``path/to/file.py:Model`` → the pydantic class (the working directory is on
    the import path)."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise CLIError(f"--schema must look like module:Model or file.py:Model, got {spec!r}")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise CLIError(f"--schema: no such file {module_name!r}")
            mod_spec = importlib.util.spec_from_file_location(f"_polars_llm_schema_{file.stem}", file)
            if mod_spec is None or mod_spec.loader is None:
                raise CLIError(f"--schema: cannot load {module_name!r}")
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[mod_spec.name] = module
            mod_spec.loader.exec_module(module)
        else:
            cwd = os.getcwd()
            if cwd not in sys.path:
                sys.path.insert(0, cwd)
            module = importlib.import_module(module_name)
    except CLIError:
        raise
    except Exception as exc:
        raise CLIError(f"--schema: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    model = getattr(module, attr, None)
    if model is None:
        raise CLIError(f"--schema: {module_name!r} has no attribute {attr!r}")
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise CLIError(f"--schema: {spec!r} is not a pydantic BaseModel subclass")
    return model


def api_key_from_env(name: str) -> str:
    if not _ENV_NAME.match(name):
        raise CLIError(  # the value is not echoed: it may be a key typed by mistake
            "--api-key-env takes the name of an environment variable (letters, digits and _), not a key"
        )
    value = env_value(name)
    if not value:
        raise CLIError(
            f"no API key: set {name} in the environment or in ./.env "
            "(--api-key-env NAME reads another variable; keys are never taken as arguments)"
        )
    return value


def _scan(path: Path, fmt: FileFormat, column: str) -> pl.LazyFrame:
    if not path.exists():
        raise CLIError(f"cannot read input {str(path)!r}: no such file")
    if not path.is_file():
        raise CLIError(f"cannot read input {str(path)!r}: not a file")
    try:
        if fmt == "csv":
            names = pl.scan_csv(path).collect_schema().names()
            overrides = {column: pl.String} if column in names else None
            lf = pl.scan_csv(path, schema_overrides=overrides)
        elif fmt == "parquet":
            lf = pl.scan_parquet(path)
        else:
            lf = pl.scan_ndjson(path)
        schema = lf.collect_schema()
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CLIError(f"cannot read input {str(path)!r} as {fmt}: {first}") from None
    if column not in schema:
        shown = ", ".join(schema.names()[:20]) or "(none)"
        raise CLIError(f"input {str(path)!r} has no column {column!r}; its columns are: {shown}")
    dtype = schema[column]
    if not (dtype in _STRINGY or isinstance(dtype, pl.Enum)):
        raise CLIError(f"the prompt column {column!r} has dtype {dtype}; it must hold text")
    return lf


def _sink(lf: pl.LazyFrame, fmt: FileFormat, target: Path) -> None:
    if fmt == "csv":
        lf.sink_csv(target)
    elif fmt == "parquet":
        lf.sink_parquet(target)
    else:
        lf.sink_ndjson(target)


def _read_statuses(path: Path, fmt: FileFormat, status_column: str) -> dict[str, int]:
    lf = {"csv": pl.scan_csv, "parquet": pl.scan_parquet, "ndjson": pl.scan_ndjson}[fmt](path)
    counts = lf.group_by(status_column).len().sort(status_column).collect()
    return {str(k): int(n) for k, n in counts.iter_rows()}


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


def _stream_output(
    chunks: Iterator[pl.DataFrame], target: Path, fmt: FileFormat
) -> BudgetExceededError | None:
    """Write ``chunks`` to a temporary file beside ``target``, renamed when complete. A budget stop still
    writes every row (the unsent ones ``pending``) and is returned; any other error leaves no file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    stop: BudgetExceededError | None = None
    try:
        with ChunkWriter(partial, fmt) as writer:
            try:
                for chunk in chunks:
                    writer.write(chunk)
            except BudgetExceededError as error:
                stop = error
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()
    return stop


def open_input(args: argparse.Namespace, extra_columns: Sequence[str] = ()) -> tuple[pl.LazyFrame, Path]:
    """The input scanned lazily and the output path, after the checks every command shares."""
    source, target = Path(args.input), Path(args.output)
    fmt_in = file_format(source, "input")
    file_format(target, "output")
    if target.exists() and source.exists() and target.resolve() == source.resolve():
        raise CLIError("--output must differ from INPUT")
    if args.result_column == args.status_column:
        raise CLIError("--result-column and --status-column must differ")
    lf = _scan(source, fmt_in, args.column)
    names = lf.collect_schema().names()
    missing = [c for c in extra_columns if c not in names]
    if missing:
        raise CLIError(
            f"input {str(source)!r} has no column(s) {', '.join(map(repr, missing))}; its columns are: "
            + ", ".join(names[:20])
        )
    taken = {args.result_column, args.status_column} & set(names)
    if taken:
        raise CLIError(
            f"the input already has column(s) {', '.join(sorted(taken))}; choose others with "
            "--result-column / --status-column"
        )
    return lf, target


def config_from(
    args: argparse.Namespace, options: dict[str, Any], *, model_required: bool = True
) -> MapConfig:
    try:
        return resolve_config(model_required=model_required, **options)
    except ConfigError as exc:
        text = str(exc)
        if text.startswith("no model"):
            text = "no model: pass --model provider/name or set MODEL in the environment or ./.env"
        raise CLIError(text) from None


def json_text(column: str) -> pl.Expr:
    """A Struct column as JSON text for CSV; a null (a failed row) stays empty, not the text ``null``.

    >>> pl.DataFrame({"r": [{"a": 1}, None]}).select(json_text("r"))["r"].to_list()
    ['{"a":1}', None]
    """
    col = pl.col(column)
    return pl.when(col.is_not_null()).then(col.struct.json_encode()).alias(column)


def write_output(out: pl.LazyFrame, target: Path, status_column: str, cfg: MapConfig) -> None:
    """Stream ``out`` to a temporary file beside ``target``, rename it when complete; print a summary."""
    fmt_out = file_format(target, "output")
    target = target.expanduser().absolute()
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        _sink(out, fmt_out, partial)
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()
    _summary(target, fmt_out, status_column, cfg)


def _summary(target: Path, fmt_out: FileFormat, status_column: str, cfg: MapConfig) -> None:
    counts = _read_statuses(target, fmt_out, status_column) if target.stat().st_size else {}
    total = sum(counts.values())
    shown = " ".join(f"{k}={v}" for k, v in counts.items()) or "no rows"
    print(f"wrote {total} rows to {target} ({shown}); cache: {cfg.cache}", file=sys.stderr)
    if counts.get("submitted"):
        print(
            f"{counts['submitted']} rows are in batches running at the provider: run the same command "
            "again later to collect them (`polars-llm batches` lists them)",
            file=sys.stderr,
        )


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
    stop = _stream_output(chunks, target, fmt_out)
    _summary(target, fmt_out, args.status_column, cfg)
    if stop is not None:
        raise stop  # exit 1 with the budget message, after the output with what finished is written
    return 0


def cmd_estimate(args: argparse.Namespace) -> int:
    """``polars-llm estimate``: what ``run`` would send and cost, without sending a request."""
    source = Path(args.input)
    lf = _scan(source, file_format(source, "input"), args.column)
    prompts = lf.select(args.column).collect().get_column(args.column)
    print(estimate_series(prompts, config_from(args, _options(args))))
    return 0
