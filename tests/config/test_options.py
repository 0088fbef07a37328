"""``MapConfig`` is the one source of truth for every option: every entry point, ``MapOptions``, the CLI
flags, ``prompt_map``'s seed names and the docs' option listing (docs/options.md) agree with its fields
and defaults."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import polars_llm
from polars_llm import MapConfig, MapOptions, sim
from polars_llm._config import EMBED_ONLY, options_listing
from polars_llm.cli import build_parser
from polars_llm.cli.options import NOT_ON_CLI
from polars_llm.exceptions import ConfigError
from polars_llm.seed import SEED_ALIASES

OPTIONS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "options.md"
FIELDS = {f.name: f for f in dataclasses.fields(MapConfig)}

ENTRY_POINTS: dict[str, Any] = {
    "pl.col().llm.map": pl.col("x").llm.map,
    "Series.llm.map": pl.Series([""]).llm.map,
    "Series.llm.amap": pl.Series([""]).llm.amap,
    "DataFrame.llm.map": pl.DataFrame().llm.map,
    "DataFrame.llm.amap": pl.DataFrame().llm.amap,
    "LazyFrame.llm.map": pl.LazyFrame().llm.map,
    "llm_map": polars_llm.llm_map,
    "llm_map_frame": polars_llm.llm_map_frame,
    "llm_map_series": polars_llm.llm_map_series,
    "llm_map_async": polars_llm.llm_map_async,
}


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_every_entry_point_takes_every_option_with_its_default(name: str) -> None:
    params = inspect.signature(ENTRY_POINTS[name]).parameters
    options = {p: params[p] for p in params if p in FIELDS}
    assert set(options) == set(FIELDS), f"{name} misses {set(FIELDS) - set(options)}"
    for option, param in options.items():
        assert param.default == FIELDS[option].default, (name, option)
        if option != "model":
            assert param.kind is inspect.Parameter.KEYWORD_ONLY, (name, option)


def test_map_options_types_every_option_but_model() -> None:
    hints = typing.get_type_hints(MapOptions)
    missing = set(FIELDS) - {"model"} - set(hints)
    extra = set(hints) - set(FIELDS)
    assert not missing, f"add to MapOptions in _map.py: {sorted(missing)}"
    assert not extra, f"MapOptions has options MapConfig does not: {sorted(extra)}"


def test_every_option_has_a_description_and_a_check_runs_on_construction() -> None:
    for f in FIELDS.values():
        assert f.metadata.get("doc"), f.name
        assert "cli" in f.metadata, f.name
    with pytest.raises(ConfigError, match="concurrency"):
        MapConfig(model="m", api_key="k", concurrency=0)
    with pytest.raises(ConfigError, match="unknown option"):
        polars_llm.resolve_config(model="m", api_key="k", concurency=3)


def test_prompt_map_seed_names_map_to_options_with_the_same_defaults() -> None:
    params = inspect.signature(polars_llm.prompt_map).parameters
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())  # every other option
    seen = set()
    for name, param in params.items():
        option = SEED_ALIASES.get(name, name)
        if option not in FIELDS:
            continue
        seen.add(option)
        if name == "cache_db_url":  # the seed's own default store, not .llm.map's cache
            assert param.default == polars_llm.DB_URL_DEFAULT
            continue
        assert param.default == FIELDS[option].default, (name, option)
    assert {"model", "api_key", "cache", "progress", "worker", "concurrency"} <= seen


def _run_parser(command: str = "run") -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


def test_cli_flags_cover_every_option_but_a_listed_few() -> None:
    assert {"api_key", "worker"} == NOT_ON_CLI  # a key never goes on a command line; a worker is Python
    run = _run_parser()
    by_dest = {a.dest: a for a in run._actions}
    embed_dest = {a.dest: a for a in _run_parser("embed")._actions}
    flags = {flag for a in run._actions for flag in a.option_strings}
    for name, f in FIELDS.items():
        cli = f.metadata["cli"]
        if cli is False:
            assert name in NOT_ON_CLI
        elif cli is True:
            if name in EMBED_ONLY:  # refused by `run`, so not offered there: a flag of `embed`
                assert name not in by_dest
                action = embed_dest[name]
            else:
                action = by_dest[name]
            assert f"--{name.replace('_', '-')}" in action.option_strings
            assert action.default == f.default, name
        else:
            assert cli in flags, f"{name} should be given by {cli}"


def test_the_options_page_lists_every_option_as_declared() -> None:
    text = OPTIONS_PAGE.read_text()
    assert options_listing() in text, (
        "docs/options.md's option listing is stale: run `uv run python scripts/sync_readme.py`"
    )


def test_transport_auto_is_an_alias_of_the_default() -> None:
    cfg = MapConfig(model="m", api_key="k", cache=None, transport="auto")
    assert cfg.transport == "aiohttp" == FIELDS["transport"].default
    with pytest.raises(ConfigError, match="transport"):
        MapConfig(model="m", api_key="k", transport="curl")


def test_an_option_passed_anywhere_reaches_the_request(sim_server: sim.SimServer) -> None:
    """One option through three entry points: same request body, same key (so the second is cached)."""
    common = {"base_url": sim_server, "api_key": "k", "cache": None, "progress": False}
    a = pl.DataFrame({"q": ["x"]}).llm.map("q", "m", system="S", **common)
    b = pl.Series("q", ["x"]).llm.map("m", system="S", **common).struct.field("result")
    assert a["result"][0] == b[0] == sim.expected_text("m", "x", system="S")
