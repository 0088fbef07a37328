"""Refusals with nothing admitted are a wait, not a rate (issue: a burst of 429s used to halve the learned
rate on every refusal, down to 3 requests a minute, and the run did not finish in 90 s).

Real HTTP against the simulator; the suite's timeout is the only clock: a collapse shows as a hang, and
the counts say that the waits were waits (a concurrency's worth of refusals per wait, not a storm).
"""

from __future__ import annotations

import polars as pl
import pytest

import polars_llm  # noqa: F401  (registers .llm)
from polars_llm import sim
from reliability_utils import MODEL, map_options


@pytest.mark.timeout(120)
def test_first_requests_refused_without_a_hint_then_everything_answered() -> None:
    """The issue's server: its first 30 requests answered 429 with no Retry-After, then everything."""
    with sim.serve(burst_requests=30, burst_retry_after=0) as server:
        df = pl.DataFrame({"q": [f"burst {i}" for i in range(40)]})
        out = df.llm.map("q", MODEL, **map_options(server, concurrency=8))
        stats = server.stats()
    assert out["status"].to_list() == ["done"] * 40
    assert out["result"].to_list() == [sim.expected_text(MODEL, q) for q in df["q"]]
    assert stats["status_counts"] == {"429": 30, "200": 40}  # each refused request retried, none lost


@pytest.mark.timeout(120)
@pytest.mark.parametrize("retry_after", [0.0, 1.0], ids=["no hint", "Retry-After 1"])
def test_everything_refused_for_a_while_then_answered(retry_after: float) -> None:
    """An outage of 3 s (everything 429) at the start: everybody waits (the hint, else a backoff that
    doubles), so each wait costs at most a concurrency's worth of refusals, and all rows finish."""
    with sim.serve(burst_429=True, burst_seconds=3.0, burst_retry_after=retry_after) as server:
        df = pl.DataFrame({"q": [f"outage {i}" for i in range(200)]})
        out = df.llm.map("q", MODEL, **map_options(server, concurrency=16))
        stats = server.stats()
    assert out["status"].to_list() == ["done"] * 200
    refused = stats["status_counts"].get("429", 0)
    # waits of 0.5, 1, 2, 4 s (or 1 s each with the hint) cover 3 s in at most 5 rounds of 16 requests
    assert 1 <= refused <= 5 * 16
    assert stats["status_counts"]["200"] == 200


def test_the_simulator_refuses_exactly_the_first_requests_it_is_told_to() -> None:
    with sim.serve(burst_requests=2, burst_retry_after=0) as server:
        df = pl.DataFrame({"q": ["a", "b", "c"]})
        df.llm.map("q", MODEL, **map_options(server, concurrency=1))
        first = server.stats()["status_counts"]
        server.configure(burst_requests=1)
        df.with_columns(pl.col("q") + "x").llm.map("q", MODEL, **map_options(server, concurrency=1))
        second = server.stats()["status_counts"]
    assert first == {"429": 2, "200": 3}
    assert second == {"429": 3, "200": 6}
