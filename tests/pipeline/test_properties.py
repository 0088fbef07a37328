"""Property tests: for random frames with nulls and duplicates, ``.llm.map`` equals a pure-Python
reference mapping, row by row and in order, and each distinct prompt is requested once.

One simulator is shared by every example (module scope, reset per example); ``cache=None`` except in
the cache property, which uses a fresh temporary file per example.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import polars_llm  # noqa: F401  (registers .llm)
from polars_llm import sim
from reliability_utils import MODEL, map_options

# Text without "[[" (so no simulator fault markers); includes NUL, newlines, emoji and other planes.
_chars = st.characters(codec="utf-8", exclude_characters="[]")
_small_pool = st.sampled_from(["a", "b", "ab", "", " ", "héllo", "😀", "x\ny", "\x00"])
prompt_values = st.one_of(st.none(), _small_pool, st.text(_chars, max_size=12))
prompt_lists = st.lists(prompt_values, max_size=40)
systems = st.one_of(st.none(), st.text(_chars, min_size=1, max_size=8))

SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def reference(values: list[str | None], system: str | None) -> tuple[list[str | None], list[str]]:
    results = [None if v is None else sim.expected_text(MODEL, v, system) for v in values]
    statuses = ["null" if v is None else "done" for v in values]
    return results, statuses


@SETTINGS
@given(values=prompt_lists, system=systems)
def test_map_equals_reference(
    module_sim: sim.SimServer, values: list[str | None], system: str | None
) -> None:
    module_sim.reset()
    frame = pl.DataFrame(
        {"row": list(range(len(values))), "p": values}, schema={"row": pl.Int64, "p": pl.String}
    )
    out = frame.llm.map("p", MODEL, **map_options(module_sim, system=system, concurrency=8))
    results, statuses = reference(values, system)
    assert out.columns == ["row", "p", "result", "status"]
    assert out["row"].to_list() == list(range(len(values)))  # order kept
    assert out["p"].to_list() == values
    assert out["result"].to_list() == results
    assert out["status"].to_list() == statuses
    stats = module_sim.stats()
    distinct = {v for v in values if v is not None}
    assert stats["requests"] == len(distinct)
    assert set(stats["per_prompt"]) == distinct


@SETTINGS
@given(values=prompt_lists)
def test_expression_and_lazy_paths_agree(module_sim: sim.SimServer, values: list[str | None]) -> None:
    frame = pl.DataFrame({"p": values}, schema={"p": pl.String})
    options = map_options(module_sim, concurrency=8)
    expr = frame.select(pl.col("p").llm.map(MODEL, **options).alias("s")).unnest("s")
    lazy = frame.lazy().llm.map("p", MODEL, **options).collect().select("result", "status")
    series = frame["p"].llm.map(MODEL, **options).struct.unnest()
    results, statuses = reference(values, None)
    for out in (expr, lazy, series):
        assert out["result"].to_list() == results
        assert out["status"].to_list() == statuses


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=prompt_lists, second=prompt_lists)
def test_cache_sends_only_new_prompts(
    module_sim: sim.SimServer, first: list[str | None], second: list[str | None]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        options = map_options(module_sim, cache=Path(tmp) / "cache.duckdb", concurrency=8)
        module_sim.reset()
        pl.DataFrame({"p": first}, schema={"p": pl.String}).llm.map("p", MODEL, **options)
        module_sim.reset()
        out = pl.DataFrame({"p": second}, schema={"p": pl.String}).llm.map("p", MODEL, **options)
        sent = set(module_sim.stats()["per_prompt"])
    assert sent == {v for v in second if v is not None} - {v for v in first if v is not None}
    results, statuses = reference(second, None)
    assert out["result"].to_list() == results and out["status"].to_list() == statuses
