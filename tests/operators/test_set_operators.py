"""Set operators ``reduce`` and ``join`` against the simulator (real HTTP, real DuckDB files).

The simulator answers their requests by visible rules (``polars_llm.sim._semantic``): a reduce request is
summarised as its most frequent words; a join's pair (checked by ``llm.filter``'s machinery) holds when a
``#tag`` occurs in both of its values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

import polars_llm
from polars_llm import BudgetExceededError, ConfigError, sim
from polars_llm._operators import reduce as reduce_module


def opts(server: sim.SimServer, **extra: Any) -> dict[str, Any]:
    return {"base_url": server, "api_key": "k", "progress": False, "cache": None, **extra}


def chat_prompts(server: sim.SimServer) -> list[str]:
    return [
        r["body"]["messages"][-1]["content"]
        for r in server.requests()
        if r["path"].endswith("/chat/completions")
    ]


def reviews(groups: dict[str, tuple[str, int]]) -> pl.DataFrame:
    """``product, review``: ``n`` reviews per product, each naming the product's complaint word."""
    rows = [
        (product, f"review {i} of {product}: the {word} is bad, {word} again ({i})")
        for product, (word, n) in groups.items()
        for i in range(n)
    ]
    return pl.DataFrame(rows, schema=["product", "review"], orient="row")


# --- reduce ------------------------------------------------------------------------------------------------


def test_reduce_per_group_keeps_keys_and_summarises_each_group(sim_server: sim.SimServer) -> None:
    df = reviews({"kettle": ("lid", 4), "lamp": ("switch", 3), "fan": ("noise", 2)})
    out = df.llm.reduce("review", "Summarise the complaints", "m", by="product", **opts(sim_server))
    assert out.columns == ["product", "result", "status"]
    assert out["product"].to_list() == ["kettle", "lamp", "fan"]
    assert out["status"].to_list() == ["done"] * 3
    for product, word in [("kettle", "lid"), ("lamp", "switch"), ("fan", "noise")]:
        summary = out.filter(pl.col("product") == product)["result"].item()
        assert summary.startswith("summary: ") and word in summary.split()
        others = {"lid", "switch", "noise"} - {word}
        assert not others & set(summary.split())  # groups stay separate
    assert sim_server.stats()["requests"] == 3  # one leaf per group, no level above


def test_group_by_agg_form_runs_every_group_of_a_level_in_one_engine_run(
    sim_server: sim.SimServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[int] = []
    real = reduce_module.map_stage

    def counted(prompts: pl.Series, *args: Any) -> pl.DataFrame:
        runs.append(len(prompts))
        return real(prompts, *args)

    monkeypatch.setattr(reduce_module, "map_stage", counted)
    df = reviews({f"p{g}": (f"word{'abcdefghij'[g]}", 12) for g in range(10)})
    out = df.group_by("product", maintain_order=True).agg(
        pl.col("review").llm.reduce("Summarise", "m", max_input_tokens=100, **opts(sim_server))
    )
    out = out.unnest("review")
    assert out["status"].to_list() == ["done"] * 10
    assert len(runs) >= 2  # a tree: leaves, then at least one level above
    assert runs[0] > 10 and runs == sorted(runs, reverse=True)  # each run holds every group's nodes
    assert len(runs) <= 4  # levels, not groups × levels
    assert sim_server.stats()["requests"] == sum(runs)


def test_reduce_tree_rerun_sends_nothing_and_appended_rows_resend_one_branch(
    sim_server: sim.SimServer, cache_path: Path
) -> None:
    df = reviews({"kettle": ("lid", 30), "lamp": ("switch", 30), "fan": ("noise", 30)})
    kwargs = opts(sim_server, cache=cache_path, max_input_tokens=150)
    first = df.llm.reduce("review", "Summarise", "m", by="product", **kwargs)
    sent = sim_server.stats()["requests"]
    assert sent > 2 * 3  # several leaves per group and a level above
    sim_server.reset()
    again = df.llm.reduce("review", "Summarise", "m", by="product", **kwargs)
    assert sim_server.stats()["requests"] == 0
    assert again.equals(first)
    more = reviews({"lamp": ("switch", 40)}).tail(10)  # 10 more lamp reviews, appended
    sim_server.reset()
    grown = pl.concat([df, more]).llm.reduce("review", "Summarise", "m", by="product", **kwargs)
    resent = chat_prompts(sim_server)
    assert 1 <= len(resent) < sent / 3  # the lamp group's last leaves and the nodes above them
    assert all("kettle" not in p and "fan" not in p for p in resent)
    assert grown.filter(pl.col("product") != "lamp").equals(first.filter(pl.col("product") != "lamp"))


def test_reduce_failed_node_fails_only_its_group_and_empty_groups_are_null(sim_server: sim.SimServer) -> None:
    df = pl.DataFrame(
        {
            "g": ["a", "a", "b", "b", "c"],
            "t": ["lid broken", "lid loose", "fine [[status:400]]", "fine", None],
        }
    )
    out = df.llm.reduce("t", "Summarise", "m", by="g", **opts(sim_server, max_attempts=1))
    assert out["status"].to_list() == ["done", "failed", "null"]
    assert out["result"].to_list()[1:] == [None, None]
    assert "lid" in out["result"][0]


class Complaints(BaseModel):
    summary: str
    severity: int


def test_reduce_response_model_shapes_the_final_answer(sim_server: sim.SimServer) -> None:
    df = reviews({"kettle": ("lid", 20), "lamp": ("switch", 2)})
    out = df.llm.reduce(
        "review", "Summarise", "m", by="product", response_model=Complaints,
        **opts(sim_server, max_input_tokens=120),
    )  # fmt: skip
    assert out.schema["result"] == pl.Struct({"summary": pl.String, "severity": pl.Int64})
    summaries = out["result"].struct.field("summary").to_list()
    assert "lid" in summaries[0] and "switch" in summaries[1]
    formats = [r["body"].get("response_format") for r in sim_server.requests()]
    assert sum(f is not None for f in formats) == 2  # only each group's top node is structured


def test_reduce_whole_column_and_lazy_forms(sim_server: sim.SimServer) -> None:
    df = reviews({"kettle": ("lid", 3), "lamp": ("switch", 2)})
    whole = df.select(pl.col("review").llm.reduce("Summarise", "m", **opts(sim_server))).unnest("review")
    assert whole.height == 1 and whole["status"].item() == "done" and "lid" in whole["result"].item()
    lazy = df.lazy().llm.reduce("review", "Summarise", "m", by="product", **opts(sim_server)).collect()
    eager = df.llm.reduce("review", "Summarise", "m", by="product", **opts(sim_server))
    assert lazy.equals(eager)


def test_reduce_bad_input_raises_before_any_request(sim_server: sim.SimServer) -> None:
    df = reviews({"kettle": ("lid", 3)})
    with pytest.raises(ConfigError, match="instruction"):
        df.llm.reduce("review", "  ", "m", by="product", **opts(sim_server))
    with pytest.raises(ConfigError, match="no column 'nope'"):
        df.llm.reduce("review", "Summarise", "m", by="nope", **opts(sim_server))
    with pytest.raises(ConfigError, match="max_input_tokens"):
        df.llm.reduce("review", "Summarise", "m", max_input_tokens=3, **opts(sim_server))
    with pytest.raises(polars_llm.ColumnTypeError):
        df.with_columns(pl.lit(1).alias("n")).llm.reduce("n", "Summarise", "m", **opts(sim_server))
    assert sim_server.stats()["requests"] == 0


def test_reduce_estimate_counts_leaves_and_sees_the_cache(
    sim_server: sim.SimServer, cache_path: Path
) -> None:
    df = reviews({"kettle": ("lid", 30), "lamp": ("switch", 30)})
    kwargs = opts(sim_server, cache=cache_path, max_input_tokens=150, price=(1.0, 2.0), max_tokens=64)
    before = df.llm.estimate_reduce("review", "Summarise", "m", by="product", **kwargs)
    leaves = before.stage("level 1")
    assert leaves.to_send > 2 and len(before.stages) >= 2 and before.cost_expected is not None
    assert sim_server.stats()["requests"] == 0
    df.llm.reduce("review", "Summarise", "m", by="product", **kwargs)
    sent = chat_prompts(sim_server)
    assert sum("Answer once, for all" in p for p in sent) == leaves.to_send
    after = df.llm.estimate_reduce("review", "Summarise", "m", by="product", **kwargs)
    assert after.stage("level 1").to_send == 0 and after.stage("level 1").cached == leaves.to_send
    assert "reduce" in str(after)


def test_reduce_max_cost_stops_before_going_over(sim_server: sim.SimServer) -> None:
    sim_server.configure(prompt_price=1e-4, completion_price=1e-4)  # USD per token, as price= says
    df = reviews({f"p{g}": ("lid", 30) for g in range(4)})
    kwargs = opts(sim_server, max_input_tokens=150, price=(100.0, 100.0), max_tokens=64)
    with pytest.raises(BudgetExceededError):
        df.llm.reduce("review", "Summarise", "m", by="product", max_cost=0.2, **kwargs)
    assert 0 < sim_server.stats()["cost"] <= 0.2  # some nodes were paid for, within the budget


# --- join --------------------------------------------------------------------------------------------------

SKILLS = ["python", "rust", "sql", "excel", "welding", "nursing", "cooking", "sales", "design", "law"]


def planted(n: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``n`` ads and ``n`` CVs; ad ``i`` and CV ``(i * 7) % n`` share skills and a ``#tag`` (true pairs)."""
    ads = [f"ad {i}: {SKILLS[i % 10]} and {SKILLS[(i // 10) % 10]} job, ref #t{i}" for i in range(n)]
    cvs = [""] * n
    for i in range(n):
        cvs[(i * 7) % n] = f"cv: {SKILLS[i % 10]} {SKILLS[(i // 10) % 10]} person, ref #t{i}"
    return pl.DataFrame({"id": range(n), "ad": ads}), pl.DataFrame({"id": range(n), "cv": cvs})


def test_join_finds_planted_pairs_with_k_candidates_per_row(
    sim_server: sim.SimServer, cache_path: Path
) -> None:
    ads, cvs = planted(40)
    template = "{left.ad} is a good match for {right.cv}"
    kwargs = opts(sim_server, cache=cache_path, k=3, embed_model="e", embed_dimensions=128)
    out = ads.llm.join(cvs, template, "m", **kwargs)
    assert out.columns == ["id", "ad", "id_right", "cv"]  # both sides, Polars' suffix on the clash
    assert sorted(zip(out["id"], out["id_right"], strict=True)) == [(i, (i * 7) % 40) for i in range(40)]
    stats = sim_server.stats()
    assert stats["requests"] - stats["embedding_requests"] == 40 * 3  # k checks per left row
    sim_server.reset()
    assert ads.llm.join(cvs, template, "m", **kwargs).equals(out)
    assert sim_server.stats()["requests"] == 0  # a rerun sends nothing


def test_join_full_product_left_how_and_suffix(sim_server: sim.SimServer) -> None:
    left = pl.DataFrame({"name": ["a #x", "b #y", "c #none"], "v": [1, 2, 3]})
    right = pl.DataFrame({"name": ["u #y", "w #x", "z #x"], "v": [7, 8, 9]})
    out = left.llm.join(
        right, "{left.name} ~ {right.name}", "m", k=None, how="left", suffix="_r", **opts(sim_server)
    )
    assert out.rows() == [
        ("a #x", 1, "w #x", 8),
        ("a #x", 1, "z #x", 9),
        ("b #y", 2, "u #y", 7),
        ("c #none", 3, None, None),
    ]
    assert out.columns == ["name", "v", "name_r", "v_r"]
    assert sim_server.stats()["requests"] == 9


def test_join_estimate_knows_the_pairs_before_sending(sim_server: sim.SimServer, cache_path: Path) -> None:
    ads, cvs = planted(20)
    template = "{left.ad} is a good match for {right.cv}"
    kwargs = opts(sim_server, cache=cache_path, k=4, embed_model="e", price=(1.0, 1.0), max_tokens=16)
    est = ads.llm.estimate_join(cvs, template, "m", **kwargs)
    assert est.detail.startswith("80 candidate pairs") and est.stage("pair checks").to_send == 80
    assert est.stage("embedding").to_send == 40 and est.cost_expected is not None
    assert sim_server.stats()["requests"] == 0
    ads.llm.join(cvs, template, "m", **kwargs)
    after = ads.llm.estimate_join(cvs, template, "m", **kwargs)  # embeddings cached: exact pairs, all cached
    assert after.stage("pair checks").cached == 80 and after.to_send == 0


def test_join_bad_input_raises_before_any_request(sim_server: sim.SimServer) -> None:
    ads, cvs = planted(5)
    good = "{left.ad} fits {right.cv}"
    cases = [
        ("{left.nope} fits {right.cv}", {"embed_model": "e"}, "left column"),
        ("{left.ad} fits", {"embed_model": "e"}, "a left and a right column"),
        ("{ad} fits {right.cv}", {"embed_model": "e"}, "left.col"),
        (good, {"embed_model": "e", "k": 0}, "k must be"),
        (good, {}, "embed_model"),
        (good, {"embed_model": "e", "how": "outer"}, "how must be"),
    ]
    for template, extra, message in cases:
        with pytest.raises(ConfigError, match=message):
            ads.llm.join(cvs, template, "m", **opts(sim_server, **extra))
    assert sim_server.stats()["requests"] == 0


def test_reduce_stopped_by_the_budget_resumes_without_paying_twice(
    sim_server: sim.SimServer, cache_path: Path
) -> None:
    sim_server.configure(prompt_price=1e-4, completion_price=1e-4)
    df = reviews({f"p{g}": ("lid", 30) for g in range(4)})
    kwargs = opts(sim_server, cache=cache_path, max_input_tokens=150, price=(100.0, 100.0), max_tokens=64)
    with pytest.raises(BudgetExceededError):
        df.llm.reduce("review", "Summarise", "m", by="product", max_cost=0.2, **kwargs)
    first = set(chat_prompts(sim_server))
    assert first
    sim_server.reset()
    out = df.llm.reduce("review", "Summarise", "m", by="product", **kwargs)
    assert out["status"].to_list() == ["done"] * 4
    assert not first & set(chat_prompts(sim_server))  # what the stopped run paid for is not sent again


def test_progress_bar_names_the_stage(sim_server: sim.SimServer, capsys: pytest.CaptureFixture[str]) -> None:
    df = reviews({"kettle": ("lid", 30)})
    df.llm.reduce(
        "review", "Summarise", "m", by="product", **opts(sim_server, progress=True, max_input_tokens=150)
    )
    err = capsys.readouterr().err
    assert "reduce: level 1 of ~" in err and "reduce: level 2" in err
    ads, cvs = planted(5)
    ads.llm.join(
        cvs, "{left.ad} fits {right.cv}", "m", k=2, embed_model="e", **opts(sim_server, progress=True)
    )
    err = capsys.readouterr().err
    assert "join: embedding" in err and "join: checking pairs" in err


def test_option_typed_dicts_list_every_setting() -> None:
    import dataclasses
    import typing

    from polars_llm import MapOptions
    from polars_llm._operators import settings as st

    cases = [  # (TypedDict, settings, the settings passed positionally)
        (st.ReduceOptions, st.ReduceSettings, {"instruction"}),
        (st.JoinOptions, st.JoinSettings, {"template"}),
        (st.TopKOptions, st.TopKSettings, {"k", "instruction"}),
        (st.DedupOptions, st.DedupSettings, set()),
    ]
    shared = set(typing.get_type_hints(MapOptions))
    for options, settings, positional in cases:
        own = set(typing.get_type_hints(options)) - shared
        assert own == {f.name for f in dataclasses.fields(settings)} - positional, settings


def test_input_budget_comes_from_the_option_else_the_listed_context(sim_server: sim.SimServer) -> None:
    import http.server
    import json
    import threading

    from polars_llm import resolve_config
    from polars_llm._operators.context import input_tokens

    class Models(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"data": [{"id": "big", "context_length": 10_000}]}).encode()
            self.send_response(200 if self.path.endswith("/models") else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        listed = resolve_config(model="big", base_url=url, api_key="k", cache=None, max_tokens=1000)
        assert input_tokens(listed, None) == int((10_000 - 1000) * 0.75)
        assert input_tokens(listed, 500) == 500
        unlisted = resolve_config(model="other", base_url=url, api_key="k", cache=None)
        assert input_tokens(unlisted, None) == 8_000
    finally:
        server.shutdown()
    no_context = resolve_config(model="m", base_url=str(sim_server), api_key="k", cache=None)
    assert input_tokens(no_context, None) == 8_000  # the simulator lists no context length


def test_join_failed_checks_count_as_no_match_and_warn(sim_server: sim.SimServer) -> None:
    left = pl.DataFrame({"a": ["x #1", "y #2 [[status:400]]", None]})
    right = pl.DataFrame({"b": ["u #1", "v #2"]})
    with pytest.warns(UserWarning, match="2 of 6 pair checks failed"):
        out = left.llm.join(
            right, "{left.a} ~ {right.b}", "m", k=None, how="left", **opts(sim_server, max_attempts=1)
        )
    assert out.rows() == [("x #1", "u #1"), ("y #2 [[status:400]]", None), (None, None)]
