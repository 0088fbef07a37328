"""The options of :class:`~polars_llm.MapConfig` on the command line: flags in, a checked config out.

:func:`add_option_flags` adds one ``--flag`` per option declared ``cli=True`` (its type, its check, its
help from the declaration), so a new option needs no CLI code; :func:`config_from` turns the parsed
values back into a :class:`~polars_llm.MapConfig` (a :class:`~.errors.CLIError` for what is wrong).
The API key is never a flag: :func:`api_key_from_env` reads the variable ``--api-key-env`` names.

>>> p = argparse.ArgumentParser()
>>> add_option_flags(p)
>>> p.parse_args(["--concurrency", "8"]).concurrency
8
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
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel

from .._config import MapConfig, env_value, option_fields, resolve_config
from ..exceptions import ConfigError
from .errors import CLIError

__all__ = [
    "NOT_ON_CLI",
    "add_key_and_column_flags",
    "add_option_flags",
    "api_key_from_env",
    "config_from",
    "load_schema",
]

_ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

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
