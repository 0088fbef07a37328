"""String ``Literal`` / ``enum.Enum`` answers become ``pl.Enum`` columns; other values keep their dtype."""

from __future__ import annotations

import enum
from typing import Literal

import polars as pl
from pydantic import BaseModel

from polars_llm import sim
from polars_llm._request import struct_dtype, to_series


class Mood(enum.StrEnum):
    HAPPY = "happy"
    SAD = "sad"


class Size(enum.Enum):
    S = "small"
    L = "large"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Labels(BaseModel):
    sentiment: Literal["positive", "neutral", "negative"]
    mood: Mood
    size: Size | None = None
    either: Literal["a"] | Literal["b"]
    tags: list[Literal["x", "y"]]
    level: Level
    stars: Literal[1, 2, 3]
    flag: Literal[True]


def test_string_labels_are_enums_in_declaration_order() -> None:
    assert struct_dtype(Labels) == pl.Struct(
        {
            "sentiment": pl.Enum(["positive", "neutral", "negative"]),
            "mood": pl.Enum(["happy", "sad"]),
            "size": pl.Enum(["small", "large"]),
            "either": pl.Enum(["a", "b"]),
            "tags": pl.List(pl.Enum(["x", "y"])),
            "level": pl.Int64,
            "stars": pl.Int64,
            "flag": pl.Boolean,
        }
    )


def test_answers_convert_into_the_enum_and_sort_by_label_order() -> None:
    texts = [
        '{"sentiment": "negative", "mood": "sad", "size": null, "either": "b", "tags": ["y"], "level": 2,'
        ' "stars": 1, "flag": true}',
        '{"sentiment": "positive", "mood": "happy", "size": "large", "either": "a", "tags": [], "level": 1,'
        ' "stars": 3, "flag": true}',
    ]
    s = to_series(Labels, "r", texts).struct.unnest()
    assert s["sentiment"].sort().to_list() == ["positive", "negative"]  # declaration order, not alphabetical
    assert s["size"].to_list() == [None, "large"]
    assert (s["sentiment"] == "positive").to_list() == [False, True]


def test_a_mapped_column_of_labels_groups_cheaply(sim_server: sim.SimServer) -> None:
    class Review(BaseModel):
        sentiment: Literal["positive", "neutral", "negative"]
        stars: int

    df = pl.DataFrame({"review": [f"review {i}" for i in range(12)]})
    out = df.llm.map(
        "review", "m", response_model=Review, base_url=sim_server, api_key="k", cache=None, progress=False
    ).unnest("result")
    assert out.schema["sentiment"] == pl.Enum(["positive", "neutral", "negative"])
    counts = out.group_by("sentiment").len().sort("sentiment")
    assert counts["len"].sum() == 12
    assert counts["sentiment"].dtype == pl.Enum(["positive", "neutral", "negative"])
