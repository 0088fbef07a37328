"""``llm.embed``: batched ``/embeddings`` requests on the engine, store and cache of ``llm.map`` (real HTTP to
the simulator, real DuckDB files)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

import polars_llm
from polars_llm import AuthenticationError, ConfigError, sim
from polars_llm._pipeline.embed import decode, share
from polars_llm.cli import main
from polars_llm.exceptions import MalformedResponseError


def opts(server: sim.SimServer, **extra: Any) -> dict[str, Any]:
    return {"base_url": server, "api_key": "k", "progress": False, **extra}


def embedding_bodies(server: sim.SimServer) -> list[dict[str, Any]]:
    return [r["body"] for r in server.requests() if r["path"].endswith("/embeddings")]


def texts(n: int, prefix: str = "t") -> list[str]:
    return [f"{prefix} {i}: a short text about item {i}" for i in range(n)]


@pytest.mark.parametrize("transport", ["aiohttp", "openai"])
def test_vectors_are_the_providers_in_row_order(sim_server: sim.SimServer, transport: str) -> None:
    df = pl.DataFrame({"text": ["cat", "dog", None, "cat"]})
    out = df.llm.embed("text", "emb", 8, **opts(sim_server, cache=None, transport=transport))
    assert out.schema["result"] == pl.Array(pl.Float32, 8)
    assert out["status"].to_list() == ["done", "done", "null", "done"]
    vectors = out["result"].to_list()
    assert vectors[0] == sim.expected_embedding("emb", "cat", 8) == vectors[3]
    assert vectors[1] == sim.expected_embedding("emb", "dog", 8)
    assert vectors[2] is None
    (body,) = embedding_bodies(sim_server)  # two unique texts, one request
    assert body["input"] == ["cat", "dog"] and body["dimensions"] == 8 and body["model"] == "emb"


def test_without_dimensions_the_result_is_a_list_of_the_providers_length(sim_server: sim.SimServer) -> None:
    out = pl.Series("t", ["a", "bb"]).llm.embed("emb", **opts(sim_server, cache=None))
    result = out.struct.field("result")
    assert result.dtype == pl.List(pl.Float32)
    assert result.to_list() == [sim.expected_embedding("emb", t, 64) for t in ["a", "bb"]]  # sim default 64
    assert "dimensions" not in embedding_bodies(sim_server)[0]


def test_the_dtype_is_known_before_any_request(sim_server: sim.SimServer) -> None:
    lf = pl.LazyFrame({"text": ["a"]})
    expr = pl.col("text").llm.embed("emb", 16, **opts(sim_server, cache=None)).alias("e")
    assert lf.with_columns(expr).collect_schema()["e"] == pl.Struct(
        {"result": pl.Array(pl.Float32, 16), "status": pl.String}
    )
    assert lf.llm.embed("text", "emb", **opts(sim_server, cache=None)).collect_schema()["result"] == pl.List(
        pl.Float32
    )
    assert sim_server.stats()["requests"] == 0
    assert polars_llm.llm_embed("text", "emb", 3, **opts(sim_server, cache=None)).meta.output_name() == "text"


def test_many_texts_per_request_and_each_text_once(sim_server: sim.SimServer) -> None:
    items = texts(250)
    df = pl.DataFrame({"text": items + items[:50]})
    out = df.llm.embed("text", "emb", 4, **opts(sim_server, cache=None, batch_size=100))
    assert (out["status"] == "done").all()
    sizes = sorted(len(b["input"]) for b in embedding_bodies(sim_server))
    assert sizes == [50, 100, 100]
    stats = sim_server.stats()
    assert stats["embedding_inputs"] == 250 and stats["requests"] == 3


def test_vectors_are_kept_in_the_cache_and_a_rerun_sends_nothing(
    sim_server: sim.SimServer, cache_path: Path
) -> None:
    df = pl.DataFrame({"text": texts(30)})
    first = df.llm.embed("text", "emb", 5, **opts(sim_server, cache=cache_path, batch_size=7))
    sim_server.reset()
    again = df.llm.embed("text", "emb", 5, **opts(sim_server, cache=cache_path, batch_size=7))
    assert sim_server.stats()["requests"] == 0
    assert again.equals(first)
    with duckdb.connect(str(cache_path), read_only=True) as con:
        (dtype,) = con.execute(
            "select data_type from information_schema.columns where table_name='requests' "
            "and column_name='embedding'"
        ).fetchone()
        rows = con.execute("select prompt, embedding, status, params from requests").fetchall()
    assert dtype == "FLOAT[]"
    assert len(rows) == 30
    for prompt, vector, status, params in rows:
        assert status == "done" and vector == pytest.approx(sim.expected_embedding("emb", prompt, 5))
        assert '"kind": "embedding"' in params


def test_a_run_that_stopped_resumes_where_it_was(sim_server: sim.SimServer, cache_path: Path) -> None:
    df = pl.DataFrame({"text": texts(20)})
    sim_server.configure(fail_mode=401)
    with pytest.raises(AuthenticationError):
        df.llm.embed("text", "emb", 3, **opts(sim_server, cache=cache_path, batch_size=5))
    sim_server.configure(fail_mode=None)
    done = df.head(10).llm.embed("text", "emb", 3, **opts(sim_server, cache=cache_path, batch_size=5))
    assert (done["status"] == "done").all()
    sim_server.reset()
    out = df.llm.embed("text", "emb", 3, **opts(sim_server, cache=cache_path, batch_size=5))
    assert (out["status"] == "done").all()
    assert sum(len(b["input"]) for b in embedding_bodies(sim_server)) == 10  # only the other half


def test_embedding_keys_are_not_chat_keys(sim_server: sim.SimServer, cache_path: Path) -> None:
    df = pl.DataFrame({"text": ["same text"]})
    df.llm.map("text", "m", **opts(sim_server, cache=cache_path))
    out = df.llm.embed("text", "m", **opts(sim_server, cache=cache_path))
    assert out["status"][0] == "done" and sim_server.stats()["embedding_requests"] == 1
    other_dims = df.llm.embed("text", "m", 2, **opts(sim_server, cache=cache_path))
    assert other_dims["result"][0].to_list() == sim.expected_embedding("m", "same text", 2)
    with duckdb.connect(str(cache_path), read_only=True) as con:
        assert con.execute("select count(distinct key) from requests").fetchone() == (3,)


def test_one_bad_text_does_not_fail_its_batch_mates(sim_server: sim.SimServer, cache_path: Path) -> None:
    items = texts(16)
    items[11] = "this one is refused [[status:400]]"
    df = pl.DataFrame({"text": items})
    out = df.llm.embed("text", "emb", 4, **opts(sim_server, cache=cache_path, batch_size=16))
    assert out["status"].to_list() == ["done"] * 11 + ["failed"] + ["done"] * 4
    assert out["result"][11] is None
    assert out["result"][0].to_list() == sim.expected_embedding("emb", items[0], 4)
    counts = sim_server.stats()["status_counts"]
    assert counts["400"] == 5  # 16 → 8 → 4 → 2 → 1: each half holding it is refused
    with duckdb.connect(str(cache_path), read_only=True) as con:
        error, kind = con.execute("select error, error_kind from requests where status='failed'").fetchone()
    assert kind == "bad_request" and "400" in error


def test_transient_errors_are_retried(sim_server: sim.SimServer) -> None:
    items = texts(6)
    items[2] += " [[flaky:500:2]]"
    out = pl.DataFrame({"text": items}).llm.embed(
        "text", "emb", 2, **opts(sim_server, cache=None, max_backoff=0.01)
    )
    assert (out["status"] == "done").all()
    assert sim_server.stats()["status_counts"] == {"500": 2, "200": 1}


def test_a_providers_rate_limit_is_waited_out(sim_server: sim.SimServer) -> None:
    sim_server.configure(rate_limit=2, window=0.3)
    out = pl.DataFrame({"text": texts(40)}).llm.embed(
        "text", "emb", 2, **opts(sim_server, cache=None, batch_size=4, concurrency=8)
    )
    assert (out["status"] == "done").all()
    assert sim_server.stats()["status_counts"]["200"] == 10


def test_tokens_and_cost_are_shared_in_proportion_to_length(
    sim_server: sim.SimServer, cache_path: Path
) -> None:
    items = ["a" * 40, "b" * 120, "c" * 240]
    pl.DataFrame({"text": items}).llm.embed("text", "emb", 2, **opts(sim_server, cache=cache_path))
    stats = sim_server.stats()
    with duckdb.connect(str(cache_path), read_only=True) as con:
        rows = dict(
            (p[0], (t, c))
            for p, t, c in con.execute("select prompt, tokens_in, cost from requests").fetchall()
        )
    assert sum(t for t, _ in rows.values()) == stats["tokens_in"] == 100  # 10 + 30 + 60
    assert [rows[k][0] for k in "abc"] == [10, 30, 60]
    assert math.isclose(sum(c for _, c in rows.values()), stats["cost"])
    assert math.isclose(rows["c"][1], 6 * rows["a"][1])


def test_chat_only_options_are_refused(sim_server: sim.SimServer) -> None:
    for option in ({"system": "s"}, {"temperature": 0.2}, {"max_tokens": 5}, {"response_model": dict}):
        with pytest.raises(ConfigError, match=r"llm\.map only"):
            pl.col("t").llm.embed("emb", **opts(sim_server), **option)

    async def worker(prompt: str) -> str:
        return prompt

    with pytest.raises(ConfigError, match="worker"):
        pl.DataFrame({"t": ["x"]}).llm.embed("t", "emb", worker=worker, **opts(sim_server))
    for option in ({"dimensions": 8}, {"batch_size": 10}):
        with pytest.raises(ConfigError, match=r"llm\.embed only"):
            pl.col("t").llm.map("m", **opts(sim_server), **option)
    with pytest.raises(ConfigError, match="dimensions"):
        pl.col("t").llm.embed("emb", 0, **opts(sim_server))
    with pytest.raises(ConfigError, match="batch_size"):
        pl.col("t").llm.embed("emb", batch_size=0, **opts(sim_server))
    with pytest.raises(polars_llm.ColumnTypeError, match="String"):
        pl.DataFrame({"t": [1]}).llm.embed("t", "emb", **opts(sim_server))
    assert sim_server.stats()["requests"] == 0


def test_every_form_gives_the_same_vectors(sim_server: sim.SimServer) -> None:
    df = pl.DataFrame({"text": ["x", "y"]})
    common = opts(sim_server, cache=None)
    a = df.select(pl.col("text").llm.embed("emb", 3, **common)).unnest("text")["result"]
    b = df["text"].llm.embed("emb", 3, **common).struct.field("result")
    c = df.lazy().llm.embed("text", "emb", 3, result_name="vec", **common).collect()["vec"]
    d = polars_llm.llm_embed_frame(df, "text", "emb", 3, **common)["result"]
    e = polars_llm.llm_embed_series(df["text"], "emb", 3, **common).struct.field("result")
    assert a.to_list() == b.to_list() == c.to_list() == d.to_list() == e.to_list()


def test_decode_checks_what_the_provider_sent() -> None:
    good = b'{"data": [{"index": 0, "embedding": [1, 2]}], "usage": {"prompt_tokens": 3, "cost": 0.5}}'
    reply = decode(good, 1, None)
    assert reply.vectors.to_pylist() == [[1.0, 2.0]] and reply.tokens == 3 and reply.cost == 0.5
    assert decode(good, 1, 3).errors == {0: "the provider returned 2 values; dimensions=3 was asked"}
    for bad in (
        b"not json",
        b'{"data": []}',
        b'{"data": [{"index": 5, "embedding": [1]}]}',
        b'{"data": [{"index": 0, "embedding": ["x"]}]}',
        b'{"data": [{"index": 0, "embedding": null}]}',
    ):
        with pytest.raises(MalformedResponseError):
            decode(bad, 1, None)
    b64 = decode(b'{"data": [{"index": 0, "embedding": "AACAPwAAAEA="}]}', 1, 2)  # float32 1.0, 2.0
    assert b64.vectors.to_pylist() == [[1.0, 2.0]]
    assert share(100, [40, 120, 240]) == [10, 30, 60] and sum(share(7, [1, 1, 1])) == 7


def test_cli_embed(sim_server: sim.SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENROUTER_API_KEY", "k")
    pl.DataFrame({"id": [1, 2, 3], "text": ["a", "b", "a"]}).write_csv("in.csv")
    base = ["embed", "in.csv", "--column", "text", "--model", "emb", "--base-url", sim_server, "-q"]
    assert main([*base, "--dimensions", "3", "--batch-size", "1", "--output", "out.parquet"]) == 0
    out = pl.read_parquet("out.parquet")
    assert out.columns == ["id", "text", "embedding", "status"]
    assert out["embedding"].dtype == pl.Array(pl.Float32, 3)
    assert out["embedding"][2].to_list() == sim.expected_embedding("emb", "a", 3)
    assert sim_server.stats()["requests"] == 2  # batch size 1, two distinct texts
    assert main([*base, "--dimensions", "3", "--output", "out.csv"]) == 0
    assert sim_server.stats()["requests"] == 2  # from the cache
    csv = pl.read_csv("out.csv")
    shown = [float(x) for x in csv["embedding"][0].strip("[]").split(",")]
    assert shown == pytest.approx(sim.expected_embedding("emb", "a", 3), rel=1e-6)  # float32's shortest text
    assert main([*base, "--system", "s", "--output", "x.parquet"]) == 2  # a chat option: no such flag


EMBED_ENTRY_POINTS: dict[str, Any] = {
    "pl.col().llm.embed": pl.col("x").llm.embed,
    "Series.llm.embed": pl.Series([""]).llm.embed,
    "DataFrame.llm.embed": pl.DataFrame().llm.embed,
    "LazyFrame.llm.embed": pl.LazyFrame().llm.embed,
    "llm_embed": polars_llm.llm_embed,
    "llm_embed_series": polars_llm.llm_embed_series,
    "llm_embed_frame": polars_llm.llm_embed_frame,
}


@pytest.mark.parametrize("name", list(EMBED_ENTRY_POINTS))
def test_embed_entry_points_take_every_option_but_the_chat_only_ones(name: str) -> None:
    import dataclasses
    import inspect
    import typing

    from polars_llm._config.options import CHAT_ONLY

    fields = {f.name: f for f in dataclasses.fields(polars_llm.MapConfig)}
    params = inspect.signature(EMBED_ENTRY_POINTS[name]).parameters
    assert {p for p in params if p in fields} == set(fields) - CHAT_ONLY
    for option in set(fields) - CHAT_ONLY:
        assert params[option].default == fields[option].default, (name, option)
    typed = set(typing.get_type_hints(polars_llm.EmbedOptions))
    assert typed == set(fields) - CHAT_ONLY - {"model", "dimensions"}


def test_a_fatal_error_keeps_the_vectors_already_received(
    sim_server: sim.SimServer, cache_path: Path
) -> None:
    items = texts(20)
    items[17] += " [[status:401]]"  # the fourth request (texts 15-19) is refused: a bad key stops the run
    df = pl.DataFrame({"text": items})
    with pytest.raises(AuthenticationError, match="stopped after"):
        df.llm.embed("text", "emb", 3, **opts(sim_server, cache=cache_path, batch_size=5, concurrency=1))
    with duckdb.connect(str(cache_path), read_only=True) as con:
        kept = con.execute("select prompt, embedding from requests where status = 'done'").fetchall()
    assert sorted(p for p, _ in kept) == sorted(items[:15])
    assert all(v == pytest.approx(sim.expected_embedding("emb", p, 3)) for p, v in kept)
