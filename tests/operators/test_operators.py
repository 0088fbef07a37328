"""Row operators (classify, filter, extract) against the simulator: values, dtypes, failures as data,
bad input before any request, every entry point. Packing has its own file (test_operators_pack.py)."""

from __future__ import annotations

import enum
import warnings
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

import polars_llm
from polars_llm import ConfigError, RowsFailedError, sim


def bodies(server: sim.SimServer) -> list[dict[str, Any]]:
    return [r["body"] for r in server.requests()]


def opts(server: sim.SimServer, **more: Any) -> dict[str, Any]:
    return {"model": "m", "base_url": str(server), "api_key": "k", "cache": None, "progress": False, **more}


REVIEWS = ["Great kettle, great price", "It broke, really bad", "Arrived late and bad", "meh", None]


def test_classify_returns_the_named_label_as_an_enum(sim_server: sim.SimServer) -> None:
    df = pl.DataFrame({"review": REVIEWS})
    out = df.with_columns(pl.col("review").llm.classify(["great", "bad"], **opts(sim_server)).alias("label"))
    assert out["label"].dtype == pl.Enum(["great", "bad"])
    assert out["label"].to_list()[:3] == ["great", "bad", "bad"]
    assert out["label"][3] in ("great", "bad")  # names no label: still one of the set (the schema's enum)
    assert out["label"][4] is None  # null text: nothing sent
    assert sim_server.stats()["requests"] == 4
    body = bodies(sim_server)[0]
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["label"]["enum"] == ["great", "bad"]


def test_classify_descriptions_examples_and_instructions_reach_the_prompt(sim_server: sim.SimServer) -> None:
    labels = {"urgent": "needs an answer today", "later": "can wait"}
    s = pl.Series("t", ["urgent: server down", "newsletter"]).llm.classify(
        labels,
        instructions="Tickets from a help desk.",
        examples=[("printer on fire", "urgent")],
        system="You are careful.",
        **opts(sim_server),
    )
    assert s.to_list()[0] == "urgent" and s.name == "t"
    system = bodies(sim_server)[0]["messages"][0]["content"]
    assert system.startswith("You are careful.")
    for part in ("urgent: needs an answer today", "later: can wait", "Tickets from a help desk.",
                 "Input: printer on fire", "Label: urgent"):  # fmt: skip
        assert part in system


class Mood(enum.Enum):
    HAPPY = "happy"
    SAD = "sad"


@pytest.mark.parametrize("labels", [pl.Enum(["happy", "sad"]), Mood, ("happy", "sad")])
def test_classify_takes_a_pl_enum_a_python_enum_or_a_sequence(sim_server: sim.SimServer, labels: Any) -> None:
    s = pl.Series(["so happy today", "sad news"]).llm.classify(labels, **opts(sim_server))
    assert s.to_list() == ["happy", "sad"]
    assert s.dtype == pl.Enum(["happy", "sad"])


def test_multi_label_gives_every_named_label(sim_server: sim.SimServer) -> None:
    s = pl.Series(["price and quality", "shipping was slow", "quality"]).llm.classify(
        ["price", "quality", "shipping"], multi_label=True, **opts(sim_server)
    )
    assert s.dtype == pl.List(pl.Enum(["price", "quality", "shipping"]))
    assert s.to_list() == [["price", "quality"], ["shipping"], ["quality"]]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([], "empty"),
        (["a", "b", "a"], "duplicate label"),
        (["a", 3], "non-empty string"),
        (["a", ""], "non-empty string"),
        ("ab", "list of strings"),
        ({"a": 1}, "non-string description"),
    ],
)
def test_bad_labels_fail_before_any_request(sim_server: sim.SimServer, labels: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        pl.col("t").llm.classify(labels, **opts(sim_server))
    with pytest.raises(ConfigError, match=message):
        pl.Series(["x"]).llm.classify(labels, **opts(sim_server))
    assert sim_server.stats()["requests"] == 0


def test_bad_examples_and_options_fail_before_any_request(sim_server: sim.SimServer) -> None:
    with pytest.raises(ConfigError, match="example"):
        pl.col("t").llm.classify(["a", "b"], examples=[("x", "c")], **opts(sim_server))
    with pytest.raises(ConfigError, match="pack"):
        pl.col("t").llm.classify(["a", "b"], **opts(sim_server, pack=0))
    with pytest.raises(ConfigError, match="response_model"):
        pl.col("t").llm.filter("is red", **opts(sim_server, response_model=BaseModel))
    with pytest.raises(ConfigError, match="on_error"):
        pl.col("t").llm.filter("is red", **opts(sim_server, on_error="explode"))
    assert sim_server.stats()["requests"] == 0


def test_filter_keeps_the_rows_where_the_condition_holds(sim_server: sim.SimServer) -> None:
    df = pl.DataFrame({"review": ["Delivery was late", "Nice teapot", None, "LATE again"]})
    kept = df.filter(pl.col("review").llm.filter("mentions late delivery", **opts(sim_server)))
    assert kept["review"].to_list() == ["Delivery was late", "LATE again"]
    mask = df["review"].llm.filter("mentions late delivery", **opts(sim_server))
    assert mask.dtype == pl.Boolean and mask.to_list() == [True, False, None, True]
    system = bodies(sim_server)[0]["messages"][0]["content"]
    assert system.endswith("Condition: mentions late delivery")


def test_frame_filter_with_a_template_over_several_columns(sim_server: sim.SimServer) -> None:
    df = pl.DataFrame(
        {"title": ["Kettle", "Refund!", "Mug", None], "body": ["wants a refund", "ok", "fine", "refund"]}
    )
    condition = "{title} or {body} asks for a refund"
    out = df.llm.filter(condition, **opts(sim_server))
    assert out["title"].to_list() == ["Kettle", "Refund!"]
    lazy = df.lazy().llm.filter(condition, **opts(sim_server))
    assert isinstance(lazy, pl.LazyFrame)
    assert lazy.collect().equals(out)
    sent = {b["messages"][1]["content"] for b in bodies(sim_server)}
    assert "title: Kettle\nbody: wants a refund" in sent
    assert all("None" not in p for p in sent)  # the row with a null title is not sent


def test_a_template_naming_a_missing_column_fails_before_any_request(sim_server: sim.SimServer) -> None:
    df = pl.DataFrame({"title": ["a"], "body": ["b"]})
    with pytest.raises(ConfigError, match="'text'"):
        df.llm.filter("{title} matches {text}", **opts(sim_server))
    with pytest.raises(ConfigError, match="'text'"):
        df.lazy().llm.filter("{title} matches {text}", **opts(sim_server))
    with pytest.raises(ConfigError, match="names no column"):
        df.llm.filter("is about cats", **opts(sim_server))
    assert sim_server.stats()["requests"] == 0


def test_extract_from_a_mapping_and_from_a_pydantic_model(sim_server: sim.SimServer) -> None:
    notes = pl.Series("note", ["city: Lyon, total: 42, from Ann", "total: 7", None])
    out = notes.llm.extract(
        {"city": "the delivery city", "total": (int, "the order total")}, **opts(sim_server)
    )
    assert out.dtype == pl.Struct({"city": pl.String, "total": pl.Int64})
    assert out[0] == {"city": "Lyon", "total": 42}
    assert out[1]["total"] == 7
    assert out[2] is None

    class Order(BaseModel):
        city: str | None
        total: float

    df = pl.DataFrame({"note": notes}).with_columns(pl.col("note").llm.extract(Order, **opts(sim_server)))
    assert df.schema["note"] == pl.Struct({"city": pl.String, "total": pl.Float64})
    assert df["note"][0] == {"city": "Lyon", "total": 42.0}
    schema = bodies(sim_server)[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["city"]["description"] == "the delivery city"


@pytest.mark.parametrize("fields", [{}, {"1x": "bad name"}, {"a": 3}, "city", {"a": (int, 3)}])
def test_bad_fields_fail_before_any_request(sim_server: sim.SimServer, fields: Any) -> None:
    with pytest.raises(ConfigError, match="extract"):
        pl.col("t").llm.extract(fields, **opts(sim_server))
    assert sim_server.stats()["requests"] == 0


def test_failed_rows_are_null_with_one_warning_then_struct_form_or_raise(sim_server: sim.SimServer) -> None:
    texts = pl.Series("t", ["good one", "[[status:400]] good", "bad one", "[[status:400]] bad"])
    with pytest.warns(UserWarning, match=r"llm.classify: 2 failed of 4 rows.*include=\('status', 'error'\)"):
        s = texts.llm.classify(["good", "bad"], **opts(sim_server))
    assert s.to_list() == ["good", None, "bad", None]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the Struct form shows the statuses: no warning
        full = texts.llm.classify(["good", "bad"], include=("status", "error"), **opts(sim_server))
    assert full.dtype == pl.Struct(
        {"result": pl.Enum(["good", "bad"]), "status": pl.String, "error": pl.String}
    )
    rows = full.struct.unnest()
    assert rows["status"].to_list() == ["done", "failed", "done", "failed"]
    assert rows["error"][1] is not None and rows["result"][0] == "good"

    with pytest.raises(RowsFailedError, match="2 failed") as raised:
        texts.llm.classify(["good", "bad"], **opts(sim_server, on_error="raise"))
    assert raised.value.failed == 2 and len(raised.value.errors) == 2

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = texts.llm.classify(["good", "bad"], **opts(sim_server, on_error="ignore"))
        clean = pl.Series(["good"]).llm.classify(["good", "bad"], **opts(sim_server))
    assert quiet.null_count() == 2 and clean.to_list() == ["good"]


def test_the_expression_form_raises_through_polars(sim_server: sim.SimServer) -> None:
    df = pl.DataFrame({"t": ["[[status:400]] x", "y"]})
    with pytest.raises(RowsFailedError):
        df.select(pl.col("t").llm.filter("is red", **opts(sim_server, on_error="raise")))


def test_operators_reuse_the_cache_and_match_map_with_the_same_model(
    sim_server: sim.SimServer, cache_path: Path
) -> None:
    texts = pl.Series("t", [f"review {i} is great" if i % 3 else f"review {i} is bad" for i in range(30)])
    first = texts.llm.classify(["great", "bad"], **opts(sim_server, cache=cache_path))
    sent = sim_server.stats()["requests"]
    again = texts.llm.classify(["great", "bad"], **opts(sim_server, cache=cache_path))
    assert sim_server.stats()["requests"] == sent == 30
    assert first.equals(again)
    assert first.to_list() == ["bad" if i % 3 == 0 else "great" for i in range(30)]


def test_group_by_and_lazy_contexts(sim_server: sim.SimServer) -> None:
    df = pl.DataFrame({"g": [1, 1, 2], "t": ["bad", "great", "great"]})
    counted = (
        df.lazy()
        .with_columns(pl.col("t").llm.classify(["great", "bad"], **opts(sim_server)).alias("label"))
        .group_by("g", "label")
        .len()
        .sort("g", "label")
        .collect()
    )
    assert counted.rows() == [(1, "great", 1), (1, "bad", 1), (2, "great", 1)]
    # (an operator inside .agg() runs once per group on Polars' threads, which can deadlock on a small
    # pool — as .llm.map does; label in with_columns, then group: one run over the whole column)


def test_estimate_counts_an_operator_expression(sim_server: sim.SimServer) -> None:
    df = pl.DataFrame({"t": [f"text {i}" for i in range(40)]})
    expr = pl.col("t").llm.classify(["a", "b"], **opts(sim_server, price=(1.0, 1.0), max_tokens=20))
    one = df.llm.estimate(expr)
    packed = polars_llm.estimate(df, expr, pack=10)
    assert one.to_send == 40 and packed.to_send == 4
    assert packed.input_tokens < one.input_tokens
    assert sim_server.stats()["requests"] == 0


def test_batch_mode_runs_an_operator_through_the_batch_api(
    sim_server: sim.SimServer, cache_path: Path
) -> None:
    texts = pl.Series("t", ["great stuff", "bad stuff", "great again"])
    out = texts.llm.classify(
        ["great", "bad"], **opts(sim_server, cache=cache_path, mode="batch", poll_interval=0.05)
    )
    assert out.to_list() == ["great", "bad", "great"]
    assert sim_server.stats()["batch"]["batch_requests"] == 3 and sim_server.stats()["requests"] == 0


def test_condition_mask_runs_a_condition_over_the_rows_of_a_frame(sim_server: sim.SimServer) -> None:
    from polars_llm._operators.filter import condition_mask

    pairs = pl.DataFrame(
        {"a": ["red apples", "pears", "plums", None], "b": ["x", "green apples", "figs", "apples"]}
    )
    cfg = polars_llm.resolve_config(**opts(sim_server, pack=2))
    mask = condition_mask(pairs, "{a} and {b} mention apples", cfg)
    assert mask.dtype == pl.Boolean and mask.to_list() == [True, True, False, None]
    assert sim_server.stats()["requests"] == 2  # three rows sent, two per request
    with pytest.raises(ConfigError, match="'c'"):
        condition_mask(pairs, "{a} and {c} match", cfg)
