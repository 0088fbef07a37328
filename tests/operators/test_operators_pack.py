"""``pack``: several rows per request, each row still cached under its own key (against the simulator)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import orjson
import polars as pl
import pytest
from pydantic import BaseModel

from polars_llm import BudgetExceededError, ConfigError, sim


def opts(server: sim.SimServer, **more: Any) -> dict[str, Any]:
    return {"model": "m", "base_url": str(server), "api_key": "k", "cache": None, "progress": False, **more}


def bodies(server: sim.SimServer) -> list[dict[str, Any]]:
    return [r["body"] for r in server.requests()]


LABELS = ["alpha", "beta", "gamma"]
TEXTS = pl.Series("t", [f"row {i} is about {LABELS[i % 3]}" for i in range(50)])
EXPECTED = [LABELS[i % 3] for i in range(50)]


def test_a_pack_of_n_sends_one_request_per_n_rows_with_the_same_answers(sim_server: sim.SimServer) -> None:
    out = TEXTS.llm.classify(LABELS, instructions="Say what the row is about.", **opts(sim_server, pack=8))
    assert out.to_list() == EXPECTED
    assert sim_server.stats()["requests"] == math.ceil(50 / 8)
    first = bodies(sim_server)[0]
    answers = first["response_format"]["json_schema"]["schema"]["properties"]["answers"]
    assert answers["minItems"] == answers["maxItems"] == 8
    assert answers["items"]["properties"]["label"]["enum"] == LABELS
    system, user = (m["content"] for m in first["messages"])
    assert system.count("Say what the row is about.") == 1 and '"answers"' in system
    assert user.startswith('{"items":["row 0 is about alpha","row 1 is about beta"')


def test_max_tokens_bounds_each_answer_so_a_pack_of_n_gets_n_times_it(sim_server: sim.SimServer) -> None:
    # A pack capped at one answer's max_tokens would be cut short every time (SmolLM2-135M on llama-server
    # writes ~16 tokens per unpacked answer, whitespace included) and split down to single rows.
    out = TEXTS.head(25).llm.classify(LABELS, **opts(sim_server, pack=10, max_tokens=16))
    assert out.to_list() == EXPECTED[:25]
    sent = sorted((len(orjson.loads(b["messages"][1]["content"])["items"]), b["max_tokens"])
                  for b in bodies(sim_server))  # fmt: skip
    assert sent == [(5, 80), (10, 160), (10, 160)]


def test_packed_and_unpacked_rows_share_their_cache_keys(sim_server: sim.SimServer, cache_path: Path) -> None:
    packed = TEXTS.head(30).llm.classify(LABELS, **opts(sim_server, cache=cache_path, pack=8))
    sent = sim_server.stats()["requests"]
    assert sent == 4
    single = TEXTS.head(30).llm.classify(LABELS, **opts(sim_server, cache=cache_path))  # pack=1: all cached
    other = TEXTS.head(30).llm.classify(LABELS, **opts(sim_server, cache=cache_path, pack=3))
    assert sim_server.stats()["requests"] == sent
    assert packed.equals(single) and packed.equals(other)
    # the reverse: rows answered alone are reused by a packed call, which sends only the new rows
    TEXTS.slice(30, 5).llm.classify(LABELS, **opts(sim_server, cache=cache_path))
    assert sim_server.stats()["requests"] == sent + 5
    TEXTS.llm.classify(LABELS, **opts(sim_server, cache=cache_path, pack=20))
    assert sim_server.stats()["requests"] == sent + 5 + 1  # 15 new rows, one pack
    assert len(bodies(sim_server)[-1]["response_format"]["json_schema"]["schema"]["properties"]["answers"]
               ["items"]["properties"]["label"]["enum"]) == 3  # fmt: skip


@pytest.mark.parametrize("marker", ["[[wrong_schema]]", "[[bad_json]]", "[[status:400]]"])
def test_an_unusable_pack_is_split_until_the_bad_row_fails_alone(
    sim_server: sim.SimServer, marker: str
) -> None:
    texts = TEXTS.head(8).to_list()
    texts[5] = f"{marker} row 5 is about gamma"
    out = (
        pl.Series("t", texts)
        .llm.classify(LABELS, include=("status", "error"), **opts(sim_server, pack=8, max_attempts=2))
        .struct.unnest()
    )
    assert out["status"].to_list() == ["done"] * 5 + ["failed"] + ["done"] * 2
    assert out["result"].to_list() == [*EXPECTED[:5], None, *EXPECTED[6:8]]
    packs = [len(orjson_items(b)) for b in bodies(sim_server) if b["messages"][1]["content"].startswith("{")]
    assert packs == [8, 4, 4, 2, 2]  # 8 → 4 good + 4 → 2 with the bad row (→ 2 rows alone) + 2 good


def orjson_items(body: dict[str, Any]) -> list[str]:
    import orjson

    return orjson.loads(body["messages"][1]["content"])["items"]


class Label(BaseModel):
    label: Literal["alpha", "beta", "gamma"]


def test_map_with_a_response_model_packs_and_needs_one(sim_server: sim.SimServer, cache_path: Path) -> None:
    out = TEXTS.llm.map(**opts(sim_server, response_model=Label, pack=10, cache=cache_path))
    assert out.struct.field("result").struct.field("label").to_list() == EXPECTED
    assert sim_server.stats()["requests"] == 5
    with pytest.raises(ConfigError, match="response_model"):
        TEXTS.llm.map(**opts(sim_server, pack=10))
    lazy = (
        TEXTS.to_frame()
        .lazy()
        .llm.map("t", **opts(sim_server, response_model=Label, pack=10, cache=cache_path))
    )
    assert lazy.collect()["status"].to_list() == ["done"] * 50
    assert sim_server.stats()["requests"] == 5  # streamed, and every row is in the cache already


def test_pack_auto_packs_when_the_instructions_dominate(sim_server: sim.SimServer) -> None:
    long = "Read the row carefully and pick the topic it is about. " * 6  # ~330 characters
    TEXTS.llm.classify(LABELS, instructions=long, **opts(sim_server, pack="auto"))
    assert sim_server.stats()["requests"] <= 5
    sim_server.reset()
    long_rows = pl.Series([f"{'x' * 3000} alpha {i}" for i in range(3)])
    assert long_rows.llm.filter("is alpha", **opts(sim_server, pack="auto")).to_list() == [True] * 3
    assert sim_server.stats()["requests"] == 3  # long rows, short instructions: nothing worth packing


def test_tokens_of_a_pack_are_shared_among_its_rows(sim_server: sim.SimServer) -> None:
    out = TEXTS.head(20).llm.classify(LABELS, include=("usage",), **opts(sim_server, pack=10))
    rows = out.struct.unnest()
    stats = sim_server.stats()
    assert rows["tokens_in"].sum() == stats["tokens_in"]
    assert rows["tokens_out"].sum() == stats["tokens_out"]


def test_max_cost_stops_packs_before_going_over(sim_server: sim.SimServer, cache_path: Path) -> None:
    sim_server.configure(prompt_price=1e-4, completion_price=1e-4)
    common = opts(sim_server, cache=cache_path, pack=10, price=(100.0, 100.0), max_tokens=20)
    with pytest.raises(BudgetExceededError):
        TEXTS.llm.classify(LABELS, **common, max_cost=0.05)
    spent = sim_server.stats()["cost"]
    assert 0 < spent <= 0.05
    assert TEXTS.llm.classify(LABELS, **common, max_cost=10.0).to_list() == EXPECTED


def test_pack_with_batch_mode_a_worker_or_struct_input_is_refused(sim_server: sim.SimServer) -> None:
    async def worker(prompt: str) -> str:
        return "{}"

    with pytest.raises(ConfigError, match="batch"):
        pl.col("t").llm.classify(LABELS, **opts(sim_server, pack=5, mode="batch", cache="x.duckdb"))
    with pytest.raises(ConfigError, match="worker"):
        pl.col("t").llm.classify(LABELS, **opts(sim_server, pack=5, worker=worker))
    with pytest.raises(ConfigError, match="struct input"):
        pl.DataFrame({"p": ["a"], "s": ["b"]}).select(
            pl.struct(prompt="p", system="s").llm.map(**opts(sim_server, response_model=Label, pack=5))
        )
    assert sim_server.stats()["requests"] == 0
