"""``join`` and ``dedup`` check their candidate pairs through ``llm.filter``'s machinery, so ``pack`` applies.

Against the simulator (real HTTP, real DuckDB files). The simulator answers the filter's request for a
pair (its values as ``name: value`` lines) by visible rules (``polars_llm.sim._semantic.pair_verdict``):
true when a ``#tag`` occurs in both values; for a condition saying "same entity", when the two values'
words match once stripped of legal suffixes. Packed or not, the answer is the same.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from test_set_operators import planted  # ad i and CV (i * 7) % n share a #tag

import polars_llm  # noqa: F401  (registers the namespaces)
from polars_llm import RowsFailedError, sim

TEMPLATE = "{left.ad} is a good match for {right.cv}"


def opts(server: sim.SimServer, **extra: Any) -> dict[str, Any]:
    return {"base_url": server, "api_key": "k", "progress": False, "cache": None, **extra}


def checks(server: sim.SimServer) -> int:
    stats = server.stats()
    return int(stats["requests"] - stats["embedding_requests"])


def test_packed_join_sends_a_fifth_of_the_requests_finds_the_same_pairs_and_reruns_free(
    sim_server: sim.SimServer, tmp_path: Path
) -> None:
    ads, cvs = planted(40)
    kwargs = opts(sim_server, k=3, embed_model="e", embed_dimensions=128)
    single = ads.llm.join(cvs, TEMPLATE, "m", **{**kwargs, "cache": tmp_path / "one.duckdb", "pack": 1})
    unpacked = checks(sim_server)
    assert unpacked == 40 * 3  # one request per candidate pair
    assert sorted(zip(single["id"], single["id_right"], strict=True)) == [
        (i, (i * 7) % 40) for i in range(40)
    ]

    sim_server.reset()
    cache = tmp_path / "ten.duckdb"
    packed = ads.llm.join(cvs, TEMPLATE, "m", **{**kwargs, "cache": cache, "pack": 10})
    assert packed.equals(single)  # the same pairs, in the same order
    assert checks(sim_server) * 5 <= unpacked and checks(sim_server) == 12
    body = next(r["body"] for r in sim_server.requests() if r["path"].endswith("/chat/completions"))
    system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
    assert "Condition: {left.ad} is a good match for {right.cv}" in system  # filter's prompt
    items = json.loads(user)["items"]
    assert len(items) == 10 and items[0].startswith("left.ad: ad ") and "\nright.cv: cv: " in items[0]

    for pack in (1, 4, "auto"):  # each pair is cached under its own key: another pack sends nothing
        sim_server.reset()
        again = ads.llm.join(cvs, TEMPLATE, "m", **{**kwargs, "cache": cache, "pack": pack})
        assert again.equals(single) and sim_server.stats()["requests"] == 0, pack


def test_packed_join_estimate_counts_packs(sim_server: sim.SimServer, cache_path: Path) -> None:
    ads, cvs = planted(20)
    kwargs = opts(sim_server, cache=cache_path, embed_model="e", price=(1.0, 1.0), max_tokens=16)
    exact = ads.llm.estimate_join(cvs, TEMPLATE, "m", k=None, **kwargs)  # 400 pairs, known
    packed = ads.llm.estimate_join(cvs, TEMPLATE, "m", k=None, pack=10, **kwargs)
    assert exact.stage("pair checks").to_send == 400 and packed.stage("pair checks").to_send == 40
    assert packed.stage("pair checks").input_tokens < exact.stage("pair checks").input_tokens
    projected = ads.llm.estimate_join(cvs, TEMPLATE, "m", k=3, pack=7, **kwargs)  # vectors not known yet
    assert projected.stage("pair checks (projected)").to_send == math.ceil(60 / 7)
    assert sim_server.stats()["requests"] == 0
    ads.llm.join(cvs, TEMPLATE, "m", k=3, pack=7, **kwargs)
    assert checks(sim_server) == math.ceil(60 / 7)


def test_packed_dedup_finds_the_same_clusters_in_fewer_requests(
    sim_server: sim.SimServer, tmp_path: Path
) -> None:
    companies = pl.Series(
        "company",
        ["Acme Inc.", "ACME", "acme corporation", "Globex", "Globex Ltd", "Initech", "Umbrella Corp",
         None, "umbrella", "Initech LLC", "Hooli", "Acme Inc."],
    )  # fmt: skip
    frame = companies.to_frame()

    def dedup(cache: Path, **extra: Any) -> pl.DataFrame:
        kwargs = opts(sim_server, embed_model="e", k=4, threshold=0.0, cache=cache, **extra)
        return frame.select(pl.col("company").llm.dedup("m", **kwargs))

    single = dedup(tmp_path / "1.db")
    unpacked = checks(sim_server)
    sim_server.reset()
    cache = tmp_path / "8.db"
    packed = dedup(cache, pack=8)
    assert packed.equals(single) and single["company"].to_list() == [0, 0, 0, 1, 1, 2, 3, None, 3, 2, 4, 0]
    assert checks(sim_server) == math.ceil(unpacked / 8) < unpacked
    est = companies.llm.estimate_dedup("m", **opts(sim_server, embed_model="e", k=4, cache=cache, pack=8))
    assert est.stage("pair checks (at most)").to_send == math.ceil(10 * 4 / 8)
    sim_server.reset()
    assert dedup(cache).equals(single)  # pack=1: every pair cached
    assert sim_server.stats()["requests"] == 0


def test_pair_check_failures_follow_on_error(sim_server: sim.SimServer) -> None:
    left = pl.DataFrame({"a": ["x #1", "y #2 [[status:400]]"]})
    right = pl.DataFrame({"b": ["u #1", "v #2"]})
    kwargs = opts(sim_server, k=None, max_attempts=1)
    with pytest.raises(RowsFailedError, match=r"llm\.join: 2 failed"):
        left.llm.join(right, "{left.a} ~ {right.b}", "m", on_error="raise", **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "ignore": no warning at all
        out = left.llm.join(right, "{left.a} ~ {right.b}", "m", on_error="ignore", **kwargs)
    assert out.rows() == [("x #1", "u #1")]
