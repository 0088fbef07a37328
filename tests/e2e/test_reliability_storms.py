"""Provider storms: transient faults are retried to completion, and every attempt is counted.

Each test maps a small frame through a faulty simulator into a real DuckDB file with default settings
(``max_attempts=8``; only the stall test lowers ``timeout``), then checks that

* every row is ``done`` with the simulator's deterministic answer, in order (0 final failures);
* the storm really happened (the simulator reports the faults);
* the store's ``attempts`` of each prompt equals the number of requests the simulator received for it.

The long variant (429 bursts with ``Retry-After: 5``) is marked ``slow``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

import polars_llm  # noqa: F401  (registers .llm)
from polars_llm import sim
from reliability_utils import MODEL, map_options, prompts, store_rows, wait_for

N = 30


def _run_storm(
    server: sim.SimServer, cache: Path, frame_prompts: list[str], **options: Any
) -> tuple[pl.DataFrame, dict[str, Any], pl.DataFrame]:
    frame = pl.DataFrame({"prompt": frame_prompts})
    out = frame.llm.map("prompt", MODEL, **map_options(server, cache=cache, **options))
    return out, server.stats(), store_rows(cache)


def _check_complete(out: pl.DataFrame, stats: dict[str, Any], rows: pl.DataFrame) -> None:
    expected = [sim.expected_text(MODEL, p) for p in out["prompt"]]
    assert out["status"].to_list() == ["done"] * out.height, rows.filter(pl.col("status") != "done")
    assert out["result"].to_list() == expected
    attempts = dict(zip(rows["prompt"], rows["attempts"], strict=True))
    assert attempts == stats["per_prompt"], "store attempts differ from requests the server received"
    assert sum(attempts.values()) == stats["requests"]
    assert set(rows["status"]) == {"done"} and rows["error"].null_count() == rows.height


STORMS: dict[str, dict[str, Any]] = {
    "5xx-30pct": {"error_rate": 0.3},  # 503s carry Retry-After: 1
    "5xx-30pct-no-retry-after": {"error_rate": 0.3, "error_retry_after": None},
    "malformed-json": {"malformed_rate": 0.25},
    "truncated-body": {"truncated_rate": 0.25},
    "truncated-connection-closed": {"truncated_rate": 0.25, "truncate_close": True},
    "connection-reset": {"reset_rate": 0.25},
    "error-inside-200": {"error_in_200_rate": 0.25},
    "empty-choices": {"empty_choices_rate": 0.25},
    "mixed": {
        "error_rate": 0.1,
        "malformed_rate": 0.04,
        "truncated_rate": 0.04,
        "reset_rate": 0.04,
        "error_in_200_rate": 0.04,
        "empty_choices_rate": 0.04,
    },
}


@pytest.mark.parametrize("storm", list(STORMS))
def test_transient_storm_completes(storm: str, cache_path: Path) -> None:
    with sim.serve(latency=0.005, **STORMS[storm]) as server:
        out, stats, rows = _run_storm(server, cache_path, prompts(N))
    assert sum(stats["faults"].values()) > 0
    assert stats["requests"] > N
    _check_complete(out, stats, rows)


def test_mixed_storm_through_the_openai_sdk(cache_path: Path) -> None:
    with sim.serve(latency=0.005, **STORMS["mixed"]) as server:
        out, stats, rows = _run_storm(server, cache_path, prompts(N), transport="openai")
    assert sum(stats["faults"].values()) > 0
    _check_complete(out, stats, rows)


def test_stalls_past_the_timeout_are_retried(cache_path: Path) -> None:
    with sim.serve(stall_rate=0.25, stall_seconds=30.0) as server:
        out, stats, rows = _run_storm(server, cache_path, prompts(N), timeout=0.5)
        # a timed-out request is abandoned (the server sees the disconnect), not waited out
        assert stats["requests"] > N
        wait_for(lambda: server.stats(per_prompt=False)["in_flight"] == 0, what="stalled handlers to end")
        assert server.stats(per_prompt=False)["cancelled"] == stats["requests"] - N
    _check_complete(out, stats, rows)


def test_flaky_prompts_take_exactly_their_attempts(cache_path: Path) -> None:
    plan = {
        "a [[flaky:500:3]]": 4,
        "b [[flaky:502:2]]": 3,
        "c [[flaky429:2]]": 3,
        "d [[flaky:408:1]]": 2,
        "e [[flaky:409:1]]": 2,
        "f [[malformed:2]]": 3,
        "g [[truncated:1]]": 2,
        "h [[error200:2]]": 3,
        "i [[empty:1]]": 2,
        "j [[reset:2]]": 3,
        "k": 1,
    }
    with sim.serve() as server:
        out, stats, rows = _run_storm(server, cache_path, list(plan))
    _check_complete(out, stats, rows)
    assert dict(zip(rows["prompt"], rows["attempts"], strict=True)) == plan


def _burst(server: sim.SimServer, cache: Path, seconds: float, retry_after: float) -> None:
    server.burst(seconds=seconds, retry_after=retry_after)
    out, stats, rows = _run_storm(server, cache, prompts(N))
    _check_complete(out, stats, rows)
    too_many = stats["status_counts"].get("429", 0)
    assert too_many > 0
    # Retry-After is honoured: each prompt is refused at most once per Retry-After period of the burst
    assert too_many <= N * (seconds / retry_after + 1)


def test_429_burst_with_retry_after(cache_path: Path) -> None:
    with sim.serve(latency=0.005) as server:
        _burst(server, cache_path, seconds=2.0, retry_after=1.0)


@pytest.mark.slow
def test_429_burst_with_retry_after_5s(cache_path: Path) -> None:
    with sim.serve(latency=0.005) as server:
        _burst(server, cache_path, seconds=11.0, retry_after=5.0)


def test_sliding_window_rate_limit(cache_path: Path) -> None:
    with sim.serve(latency=0.005, rate_limit=15, window=1.0) as server:
        out, stats, rows = _run_storm(server, cache_path, prompts(2 * N))
    assert stats["faults"].get("rate_limit", 0) > 0
    _check_complete(out, stats, rows)
