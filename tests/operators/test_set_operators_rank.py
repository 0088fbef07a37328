"""Set operators ``top_k`` and ``dedup`` against the simulator (real HTTP, real DuckDB files).

The simulator ranks items by the last number in their text and calls two values the same entity when
their words match once lower-cased and stripped of legal suffixes (``polars_llm.sim._semantic``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from polars_llm import ConfigError, sim
from polars_llm._operators.dedup import components
from polars_llm._operators.topk import requests_needed


def opts(server: sim.SimServer, **extra: Any) -> dict[str, Any]:
    return {"base_url": server, "api_key": "k", "progress": False, "cache": None, **extra}


def tickets(n: int, seed: int = 7) -> pl.DataFrame:
    """``n`` tickets with distinct visible urgencies (a permutation of 0..n-1)."""
    return pl.DataFrame(
        {"id": range(n), "ticket": [f"ticket {i}: urgency {(i * seed) % n}" for i in range(n)]}
    )


# --- top_k -------------------------------------------------------------------------------------------------


def test_top_k_returns_the_best_rows_in_order_with_the_documented_requests(
    sim_server: sim.SimServer, cache_path: Path
) -> None:
    df = tickets(300)
    kwargs = opts(sim_server, cache=cache_path)
    out = df.llm.top_k(5, "most urgent", "m", column="ticket", **kwargs)
    urgencies = [int(t.rsplit(" ", 1)[1]) for t in out["ticket"]]
    assert urgencies == [299, 298, 297, 296, 295]
    assert out["rank"].to_list() == [1, 2, 3, 4, 5] and out.schema["rank"] == pl.UInt32
    assert out.columns == ["id", "ticket", "rank"]
    assert sim_server.stats()["requests"] == requests_needed(300, 5, 40)
    sim_server.reset()
    assert df.llm.top_k(5, "most urgent", "m", column="ticket", **kwargs).equals(out)
    assert sim_server.stats()["requests"] == 0  # every window is cached


def test_top_k_requests_grow_linearly_and_stay_far_below_n_log_n() -> None:
    assert requests_needed(1000, 10, 40) == 35
    assert requests_needed(1000, 10, 40) <= 0.3 * 1000 * 9.97
    assert requests_needed(10_000, 10, 40) < 11 * requests_needed(1000, 10, 40)
    assert requests_needed(5, 10, 40) == 1 and requests_needed(1, 3, 40) == 0


def test_top_k_by_group_ranks_each_group_and_skips_nulls(sim_server: sim.SimServer) -> None:
    df = pl.DataFrame(
        {
            "team": ["a"] * 50 + ["b"] * 50 + ["c"],
            "ticket": [f"a{i} urgency {i}" for i in range(50)]
            + [f"b{i} urgency {100 - i}" if i != 0 else None for i in range(50)]
            + ["c0 urgency 1"],
        }
    )
    out = df.llm.top_k(2, "most urgent", "m", column="ticket", by="team", window=10, **opts(sim_server))
    assert out.select("team", "ticket", "rank").rows() == [
        ("a", "a49 urgency 49", 1), ("a", "a48 urgency 48", 2),
        ("b", "b1 urgency 99", 1), ("b", "b2 urgency 98", 2),
        ("c", "c0 urgency 1", 1),
    ]  # fmt: skip


def test_top_k_survives_a_failed_window_and_warns(sim_server: sim.SimServer) -> None:
    texts = [f"t{i} urgency {i}" for i in range(30)]
    texts[3] = "t3 [[status:400]] urgency 3"  # its window's request fails
    df = pl.DataFrame({"ticket": texts})
    with pytest.warns(UserWarning, match="1 ranking request"):
        out = df.llm.top_k(
            3, "most urgent", "m", column="ticket", window=10, **opts(sim_server, max_attempts=1)
        )
    assert out.height == 3 and out["ticket"][0] == "t29 urgency 29"


def test_top_k_bad_input_raises_before_any_request(sim_server: sim.SimServer) -> None:
    df = tickets(10)
    with pytest.raises(ConfigError, match="k must be"):
        df.llm.top_k(0, "most urgent", "m", column="ticket", **opts(sim_server))
    with pytest.raises(ConfigError, match="instruction"):
        df.llm.top_k(3, "", "m", column="ticket", **opts(sim_server))
    with pytest.raises(ConfigError, match="no column 'nope'"):
        df.llm.top_k(3, "urgent", "m", column="nope", **opts(sim_server))
    assert sim_server.stats()["requests"] == 0


def test_top_k_estimate_matches_what_is_sent(sim_server: sim.SimServer) -> None:
    df = tickets(500)
    est = df.llm.estimate_top_k(10, "most urgent", "m", column="ticket", **opts(sim_server, price=(1.0, 1.0)))
    assert sim_server.stats()["requests"] == 0
    df.llm.top_k(10, "most urgent", "m", column="ticket", **opts(sim_server))
    assert est.to_send == sim_server.stats()["requests"] == requests_needed(500, 10, 40)


# --- dedup -------------------------------------------------------------------------------------------------

COMPANIES = [
    "Acme Inc.", "ACME", "acme corporation", "Globex", "Globex Ltd", "Initech", "Umbrella Corp",
    None, "umbrella", "Initech LLC", "Hooli", "Acme Inc.",
]  # fmt: skip


def test_dedup_clusters_same_entities(sim_server: sim.SimServer, cache_path: Path) -> None:
    df = pl.DataFrame({"company": COMPANIES})
    kwargs = opts(sim_server, cache=cache_path, embed_model="e", k=4, threshold=0.0)
    out = df.with_columns(cluster=pl.col("company").llm.dedup("m", **kwargs))
    assert out.schema["cluster"] == pl.UInt32
    clusters = out["cluster"].to_list()
    assert clusters == [0, 0, 0, 1, 1, 2, 3, None, 3, 2, 4, 0]
    checks = sim_server.stats()["requests"] - sim_server.stats()["embedding_requests"]
    assert 0 < checks <= 10 * 4  # at most distinct values × k pairs
    sim_server.reset()
    again = df.with_columns(cluster=pl.col("company").llm.dedup("m", **kwargs))
    assert again.equals(out) and sim_server.stats()["requests"] == 0


def test_dedup_threshold_prunes_candidates(sim_server: sim.SimServer) -> None:
    df = pl.DataFrame({"company": COMPANIES})
    loose = df.select(pl.col("company").llm.dedup("m", **opts(sim_server, embed_model="e", threshold=-1.0)))
    loose_checks = sim_server.stats()["requests"] - sim_server.stats()["embedding_requests"]
    sim_server.reset()
    strict = df.select(pl.col("company").llm.dedup("m", **opts(sim_server, embed_model="e", threshold=0.99)))
    assert sim_server.stats()["requests"] - sim_server.stats()["embedding_requests"] == 0 < loose_checks
    assert strict["company"].drop_nulls().n_unique() == 10  # nothing confirmed: every distinct value alone
    assert loose["company"].drop_nulls().n_unique() <= 10


def test_dedup_estimate_and_bad_input(sim_server: sim.SimServer) -> None:
    series = pl.Series("company", COMPANIES)
    est = series.llm.estimate_dedup("m", **opts(sim_server, embed_model="e", k=2))
    assert est.detail == "10 distinct values, at most 20 pairs" and est.stage("embedding").to_send == 10
    df = series.to_frame()
    for extra, message in [
        ({"k": 0}, "k must be"),
        ({"threshold": 2.0}, "threshold"),
        ({"instruction": " "}, "instruction"),
    ]:
        with pytest.raises(ConfigError, match=message):
            df.select(pl.col("company").llm.dedup("m", **opts(sim_server, embed_model="e", **extra)))
    assert sim_server.stats()["requests"] == 0


def test_components_numbers_clusters_by_first_row() -> None:
    assert components(6, [(5, 4), (4, 0), (2, 3)]) == [0, 1, 2, 2, 0, 0]
    assert components(3, []) == [0, 1, 2]
