"""Bad and unusual input: wrong dtypes fail before any request, odd prompts round-trip exactly.

Everything goes through the ``llm`` namespaces against the simulator over HTTP; answers are checked
against :func:`polars_llm.sim.expected_text` and request counts against the simulator's stats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

import polars_llm  # noqa: F401  (registers .llm)
from polars_llm import sim
from polars_llm.exceptions import ColumnTypeError, ConfigError
from reliability_utils import MODEL, map_options, store_rows


def _options(server: str, **overrides: Any) -> dict[str, Any]:
    return map_options(server, **overrides)


@pytest.mark.parametrize(
    ("values", "dtype_text"),
    [
        pytest.param([1, 2], "Int64", id="int"),
        pytest.param([1.5, None], "Float64", id="float"),
        pytest.param([True, False], "Boolean", id="bool"),
        pytest.param([["a"], ["b"]], "List(String)", id="list"),
        pytest.param([{"x": "a"}], "Struct", id="struct"),
        pytest.param([b"a"], "Binary", id="binary"),
    ],
)
def test_non_string_column_is_refused_naming_the_dtype(
    values: list[Any], dtype_text: str, sim_server: sim.SimServer
) -> None:
    frame = pl.DataFrame({"p": values})
    calls = [
        lambda: frame.llm.map("p", MODEL, **_options(sim_server)),
        lambda: frame["p"].llm.map(MODEL, **_options(sim_server)),
        lambda: frame.lazy().llm.map("p", MODEL, **_options(sim_server)).collect(),
        lambda: frame.with_columns(pl.col("p").llm.map(MODEL, **_options(sim_server)).alias("out")),
    ]
    for call in calls:
        with pytest.raises(ColumnTypeError) as info:
            call()
        assert isinstance(info.value, TypeError) and isinstance(info.value, ConfigError)
        assert dtype_text in str(info.value) and "'p'" in str(info.value) and "cast" in str(info.value)
    assert sim_server.stats()["requests"] == 0


class Rating(BaseModel):
    label: str
    score: int


@pytest.mark.parametrize("response_model", [None, Rating], ids=["text", "structured"])
@pytest.mark.parametrize("dtype", [pl.String, pl.Null], ids=["string", "null-dtype"])
def test_empty_frame_sends_nothing_and_has_the_output_schema(
    response_model: type[BaseModel] | None, dtype: pl.DataType, sim_server: sim.SimServer, cache_path: Path
) -> None:
    frame = pl.DataFrame({"id": [], "p": []}, schema={"id": pl.Int64, "p": dtype})
    result = pl.String() if response_model is None else pl.Struct({"label": pl.String, "score": pl.Int64})
    expected = {"id": pl.Int64(), "p": dtype, "result": result, "status": pl.String()}
    options = _options(sim_server, cache=cache_path, response_model=response_model)
    eager = frame.llm.map("p", MODEL, **options)
    lazy = frame.lazy().llm.map("p", MODEL, **options)
    assert dict(eager.schema) == expected
    assert dict(lazy.collect_schema()) == expected
    assert dict(lazy.collect().schema) == expected and eager.height == 0
    assert sim_server.stats()["requests"] == 0
    assert not cache_path.exists()  # nothing to do: the cache is not even opened


def test_all_null_column(sim_server: sim.SimServer, cache_path: Path) -> None:
    for frame in (
        pl.DataFrame({"p": [None, None, None]}),
        pl.DataFrame({"p": [None, None]}, schema={"p": pl.String}),
    ):
        out = frame.llm.map("p", MODEL, **_options(sim_server, cache=cache_path))
        assert out["status"].to_list() == ["null"] * frame.height
        assert out["result"].null_count() == frame.height and out.schema["result"] == pl.String
    assert sim_server.stats()["requests"] == 0


def test_one_megabyte_prompt(sim_server: sim.SimServer, cache_path: Path) -> None:
    big = "".join(chr(0x41 + i % 26) for i in range(1_000_000)) + " end ✓"
    out = pl.DataFrame({"p": [big, "small"]}).llm.map("p", MODEL, **_options(sim_server, cache=cache_path))
    assert out["status"].to_list() == ["done", "done"]
    assert out["result"][0] == sim.expected_text(MODEL, big)
    assert sim_server.stats()["requests"] == 2
    rows = store_rows(cache_path)
    assert big in rows["prompt"].to_list()
    sim_server.reset()  # served from the cache the second time
    again = pl.DataFrame({"p": [big]}).llm.map("p", MODEL, **_options(sim_server, cache=cache_path))
    assert again["result"][0] == out["result"][0] and sim_server.stats()["requests"] == 0


ODD_PROMPTS = [
    "",
    " ",
    "\t",
    "\n",
    "line one\nline two\r\nline three\r",
    "nul\x00inside",
    "\x00",
    "trailing nul\x00",
    "\x01\x02\x1f\x7f control",
    "héllo wörld ñ ç",
    "e\u0301 combining",
    "😀👍🏽👨‍👩‍👧‍👦 🏳️‍🌈 emoji",
    "עברית العربية RTL",
    "中文 日本語 한국어",
    "\u200b zero width \ufeff bom",
    "\U0010ffff max code point",
    '"quotes" \\backslash\\ {"json": [1]}',
    "[[not a marker",
    "tab\there",
]


def test_unicode_emoji_nul_and_newlines_round_trip(sim_server: sim.SimServer, cache_path: Path) -> None:
    frame = pl.DataFrame({"p": [*ODD_PROMPTS, *ODD_PROMPTS]})  # duplicates too
    out = frame.llm.map("p", MODEL, **_options(sim_server, cache=cache_path))
    assert out["status"].to_list() == ["done"] * frame.height
    assert out["result"].to_list() == [sim.expected_text(MODEL, p) for p in frame["p"]]
    stats = sim_server.stats()
    assert stats["requests"] == len(ODD_PROMPTS)
    assert stats["per_prompt"] == dict.fromkeys(ODD_PROMPTS, 1)  # each sent exactly as given
    rows = store_rows(cache_path)
    assert sorted(rows["prompt"].to_list()) == sorted(ODD_PROMPTS)
    assert dict(zip(rows["prompt"], rows["result"], strict=True)) == {
        p: sim.expected_text(MODEL, p) for p in ODD_PROMPTS
    }
    sim_server.reset()
    again = frame.llm.map("p", MODEL, **_options(sim_server, cache=cache_path))
    assert again.equals(out) and sim_server.stats()["requests"] == 0


def test_a_million_copies_of_one_prompt_is_one_request(sim_server: sim.SimServer, cache_path: Path) -> None:
    n = 1_000_000
    frame = pl.DataFrame({"p": pl.Series(["the same prompt"] * n)}).with_columns(
        pl.when(pl.int_range(pl.len()) % 1000 == 7).then(None).otherwise(pl.col("p")).alias("p")
    )
    out = frame.llm.map("p", MODEL, **_options(sim_server, cache=cache_path))
    assert sim_server.stats()["requests"] == 1
    assert out.height == n
    counts = dict(out["status"].value_counts().iter_rows())
    assert counts == {"done": n - n // 1000, "null": n // 1000}
    assert out.filter(pl.col("status") == "done")["result"].unique().to_list() == [
        sim.expected_text(MODEL, "the same prompt")
    ]
    assert store_rows(cache_path).height == 1


def test_categorical_and_enum_columns_are_mapped_as_text(sim_server: sim.SimServer) -> None:
    values = ["red", None, "blue", "red"]
    for dtype in (pl.Categorical(), pl.Enum(["red", "blue"])):
        frame = pl.DataFrame({"p": pl.Series(values, dtype=dtype)})
        out = frame.llm.map("p", MODEL, **_options(sim_server))
        assert out["status"].to_list() == ["done", "null", "done", "done"]
        assert out["result"].to_list() == [None if v is None else sim.expected_text(MODEL, v) for v in values]
    assert set(sim_server.stats()["per_prompt"]) == {"red", "blue"}
