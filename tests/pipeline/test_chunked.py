"""The expression form (``pl.col(...).llm.map`` and the row operators) in queries Polars runs in chunks.

* In a lazy query the streaming engine calls the expression once per morsel (``streaming_chunk_size``
  makes them small here): every chunk is answered through one session, so ``max_cost`` holds for the
  whole query, prompts repeated in later chunks are not sent again, and rows come back in order.
* An eager frame of several chunks: the in-memory engine calls the expression on its compute threads,
  several chunks at once; the calls take turns, none waits on Polars work queued behind it, and
  ``max_cost`` is shared between them.
* A real SIGINT stops a streamed query; what finished is kept and a rerun pays nothing twice.

All against the simulator over HTTP, with real DuckDB files.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

import polars_llm
from polars_llm import BudgetExceededError, sim
from polars_llm._cost import usd
from reliability_utils import interrupt_child

MODEL = "sim/echo"  # listed and priced by the simulator
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def server() -> Iterator[sim.SimServer]:
    with sim.serve() as s:
        yield s


@pytest.fixture
def small_morsels() -> Iterator[None]:
    with pl.Config(streaming_chunk_size=20):
        yield


def opts(server: sim.SimServer, cache: Path | None, **extra: Any) -> dict[str, Any]:
    return {"base_url": str(server), "api_key": "k", "cache": cache, "progress": False, **extra}


def prompts(n: int, distinct: int | None = None) -> list[str]:
    distinct = distinct or n
    return [f"review {i % distinct}: the kettle arrived late but works" for i in range(n)]


def several_chunks(values: list[str], parts: int) -> pl.DataFrame:
    size = -(-len(values) // parts)
    frames = [pl.DataFrame({"q": values[i : i + size]}) for i in range(0, len(values), size)]
    frame = pl.concat(frames, rechunk=False)
    assert frame.n_chunks() == parts
    return frame


def test_a_lazy_query_maps_chunk_by_chunk_in_order_sending_each_prompt_once(
    server: sim.SimServer, cache_path: Path, small_morsels: None, tmp_path: Path
) -> None:
    values = prompts(200, distinct=70)  # a prompt comes back in later chunks
    lf = pl.LazyFrame({"id": range(200), "q": values})
    mapped = pl.col("q").llm.map(MODEL, **opts(server, cache_path)).alias("llm")
    out_path = tmp_path / "out.parquet"
    lf.with_columns(mapped).unnest("llm").sink_parquet(out_path)
    out = pl.read_parquet(out_path)
    assert out["id"].to_list() == list(range(200))
    assert out["status"].to_list() == ["done"] * 200
    assert out["result"].to_list() == [sim.expected_text(MODEL, q) for q in values]
    assert server.stats()["requests"] == 70  # every distinct prompt once, across chunks
    # the same expression again, collected: from the cache, nothing sent
    again = lf.with_columns(mapped).collect().unnest("llm")
    assert again["result"].to_list() == out["result"].to_list() and server.stats()["requests"] == 70


def test_one_max_cost_holds_for_every_chunk_of_a_lazy_query(
    server: sim.SimServer, cache_path: Path, small_morsels: None
) -> None:
    values = prompts(200)
    options = opts(server, cache_path, max_tokens=32, concurrency=4)
    est = pl.DataFrame({"q": values}).llm.estimate("q", MODEL, **options)
    budget = est.cost_expected / 4  # type: ignore[operator]  (a fifth of a chunk's share would pass per chunk)
    query = pl.LazyFrame({"q": values}).with_columns(
        pl.col("q").llm.map(MODEL, max_cost=budget, **options).alias("llm")
    )
    with pytest.raises(BudgetExceededError) as info:
        query.collect()
    assert server.stats()["cost"] <= budget  # one budget for the query, not one per chunk
    assert 0 < server.stats()["requests"] < 200
    assert info.value.frame is not None and {"done", "pending"} <= set(info.value.frame["status"])
    # a larger budget finishes the rest, sending only what was not answered
    sent = server.stats()["requests"]
    out = (
        pl.LazyFrame({"q": values})
        .with_columns(pl.col("q").llm.map(MODEL, **options).alias("llm"))
        .collect()
        .unnest("llm")
    )
    assert out["status"].to_list() == ["done"] * 200
    assert server.stats()["requests"] == 200 and sent < 200


def test_an_eager_frame_of_several_chunks_shares_one_max_cost(
    server: sim.SimServer, cache_path: Path
) -> None:
    values = prompts(240)
    frame = several_chunks(values, 6)  # the in-memory engine calls the expression per chunk, on its pool
    options = opts(server, cache_path, max_tokens=32, concurrency=4)
    out = frame.with_columns(pl.col("q").llm.map(MODEL, **options).alias("llm")).unnest("llm")
    assert out["result"].to_list() == [sim.expected_text(MODEL, q) for q in values]
    assert server.stats()["requests"] == 240

    server.reset()
    fresh = several_chunks(prompts(240, distinct=240)[::-1], 6).with_columns(pl.col("q") + " (again)")
    est = fresh.llm.estimate("q", MODEL, **options)
    budget = est.cost_expected / 4  # type: ignore[operator]
    with pytest.raises(BudgetExceededError) as info:
        fresh.with_columns(pl.col("q").llm.map(MODEL, max_cost=budget, **options).alias("llm"))
    assert 0 < server.stats()["requests"] < 240
    assert server.stats()["cost"] <= budget
    # the stop speaks of the query: every chunk's spend (counted once) against the whole max_cost
    assert info.value.budget == budget and info.value.spent == pytest.approx(server.stats()["cost"])
    assert f"spent of the {usd(budget)} budget" in str(info.value)


def test_row_operators_stream_in_a_lazy_query(server: sim.SimServer, small_morsels: None) -> None:
    labels = ["late", "broken", "fine"]
    texts = [f"order {i}: it was {labels[i % 3]}" for i in range(90)]
    lf = pl.LazyFrame({"text": texts})
    options = opts(server, None)
    out = lf.with_columns(  # two expressions side by side in one streamed query: a session each
        pl.col("text").llm.classify(labels, model=MODEL, **options).alias("label"),
        pl.col("text").llm.map(MODEL, **options).struct.field("result").alias("answer"),
    ).collect()
    assert out["label"].dtype == pl.Enum(labels)
    assert out["label"].to_list() == [labels[i % 3] for i in range(90)]
    assert out["answer"].to_list() == [sim.expected_text(MODEL, t) for t in texts]
    assert server.stats()["requests"] == 180
    kept = lf.filter(pl.col("text").llm.filter("mentions late delivery", model=MODEL, **options)).collect()
    assert kept.height > 0 and set(kept["text"]) <= set(texts)


QUERIES = {
    # the streaming engine, morsels of 50 rows on its own threads
    "lazy": "with pl.Config(streaming_chunk_size=50):\n"
    "                lf.with_columns(expr.alias('llm')).collect()",
    # the in-memory engine, a frame of 8 chunks handed over on its compute threads
    "eager chunks": "pl.concat([f for f in lf.collect().iter_slices(50)], rechunk=False)"
    ".with_columns(expr.alias('llm'))",
}


@pytest.mark.parametrize("query", QUERIES)
def test_a_real_sigint_stops_a_chunked_expression_and_a_rerun_pays_nothing_twice(
    tmp_path: Path, query: str
) -> None:
    cache = tmp_path / "c.duckdb"
    n = 400
    script = textwrap.dedent(
        f"""
        import sys
        import polars as pl
        import polars_llm
        lf = pl.LazyFrame({{"p": [f"row {{i}}" for i in range({n})]}})
        expr = pl.col("p").llm.map("m", base_url=sys.argv[1], api_key="k", cache={str(cache)!r},
                                   progress=False, concurrency=4)
        print("started", flush=True)
        try:
            {QUERIES[query]}
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        else:
            print("finished", flush=True)
        """
    )
    with sim.serve(latency=0.02) as server:
        out, err = interrupt_child(script, server, after_ok=60)
        assert out.strip() == "interrupted", err
        server.configure(latency=0.0)
        with duckdb.connect(str(cache), read_only=True) as con:
            (kept,) = con.execute("select count(*) from requests where status = 'done'").fetchone()
        assert kept >= 60
        server.reset()
        lf = pl.LazyFrame({"p": [f"row {i}" for i in range(n)]})
        expr = pl.col("p").llm.map("m", base_url=str(server), api_key="k", cache=cache, progress=False)
        rerun = lf.with_columns(expr.alias("llm")).collect().unnest("llm")
        again = server.stats()["per_prompt"]
    assert rerun["status"].to_list() == ["done"] * n
    assert sum(again.values()) == n - kept and set(again.values()) == {1}
    assert polars_llm  # registers .llm


def test_operators_and_map_inside_agg_run_once_over_every_group(server: sim.SimServer) -> None:
    """Polars calls them on its compute threads, two at once here: each runs on the thread it was called
    on, so neither waits for a thread the other holds."""
    labels = ["late", "fine"]
    df = pl.DataFrame(
        {"g": [i % 7 for i in range(140)], "t": [f"order {i}: it was {labels[i % 2]}" for i in range(140)]}
    )
    options = opts(server, None)
    out = (
        df.group_by("g")
        .agg(
            pl.col("t").llm.classify(labels, model=MODEL, **options).alias("label"),
            pl.col("t").llm.map(MODEL, **options).struct.field("result").alias("answer"),
            pl.col("t"),
        )
        .sort("g")
    )
    for row in out.iter_rows(named=True):
        assert row["label"] == [labels[int(t.split()[1].rstrip(":")) % 2] for t in row["t"]]
        assert row["answer"] == [sim.expected_text(MODEL, t) for t in row["t"]]
    assert server.stats()["requests"] == 280
