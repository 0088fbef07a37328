"""Core behaviour of ``.llm.map`` against the simulator over real HTTP, with real DuckDB files."""

from __future__ import annotations

import _thread
import signal
import threading
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Literal

import duckdb
import polars as pl
import pytest
from pydantic import BaseModel

import polars_llm
from polars_llm import sim
from polars_llm.exceptions import AuthenticationError, ColumnTypeError, ConfigError

KEY = "sk-test-core"


@pytest.fixture
def server() -> Iterator[sim.SimServer]:
    with sim.serve() as s:
        yield s


def opts(server: str, **extra: object) -> dict[str, object]:
    return {"base_url": server, "api_key": KEY, "progress": False, **extra}


def test_order_dedup_nulls(server: sim.SimServer, tmp_path: Path) -> None:
    prompts = ["b", "a", None, "b", "c", None, "a", "a"]
    df = pl.DataFrame({"id": range(len(prompts)), "prompt": prompts})
    out = df.llm.map("prompt", "m", cache=tmp_path / "c.duckdb", **opts(server))
    assert out.columns == ["id", "prompt", "result", "status"]
    assert out["id"].to_list() == list(range(len(prompts)))
    expected = [None if p is None else sim.expected_text("m", p) for p in prompts]
    assert out["result"].to_list() == expected
    assert out["status"].to_list() == ["null" if p is None else "done" for p in prompts]
    stats = server.stats()
    assert stats["requests"] == 3
    assert stats["per_prompt"] == {"a": 1, "b": 1, "c": 1}


def test_expression_api_and_struct(server: sim.SimServer) -> None:
    df = pl.DataFrame({"prompt": ["x", "y"]})
    expr = pl.col("prompt").llm.map("m", cache=None, **opts(server)).alias("llm")
    out = df.with_columns(expr).unnest("llm")
    assert out.schema == pl.Schema({"prompt": pl.String, "result": pl.String, "status": pl.String})
    assert out["result"].to_list() == [sim.expected_text("m", "x"), sim.expected_text("m", "y")]


def test_system_prompt_reaches_the_model(server: sim.SimServer) -> None:
    out = pl.DataFrame({"p": ["q"]}).llm.map("p", "m", system="be brief", cache=None, **opts(server))
    assert out["result"][0] == sim.expected_text("m", "q", system="be brief")


def test_collect_schema_sends_nothing(server: sim.SimServer) -> None:
    class Out(BaseModel):
        label: str
        n: int

    lf = pl.LazyFrame({"prompt": ["a", "b"]}).llm.map(
        "prompt", "m", response_model=Out, cache=None, **opts(server)
    )
    schema = lf.collect_schema()
    assert schema["result"] == pl.Struct({"label": pl.String, "n": pl.Int64})
    assert schema["status"] == pl.String
    assert server.stats()["requests"] == 0


@pytest.mark.parametrize("engine", ["in-memory", "streaming", "auto"])
def test_lazyframe_every_engine(server: sim.SimServer, tmp_path: Path, engine: str) -> None:
    prompts = [f"p{i % 50}" for i in range(300)]
    lf = pl.LazyFrame({"prompt": prompts}).llm.map("prompt", "m", cache=tmp_path / "c.duckdb", **opts(server))
    out = lf.collect(engine=engine)  # type: ignore[arg-type]
    assert out["result"].to_list() == [sim.expected_text("m", p) for p in prompts]
    assert server.stats()["requests"] == 50


def test_custom_result_names(server: sim.SimServer) -> None:
    out = pl.DataFrame({"p": ["a"]}).llm.map(
        "p", "m", result_name="answer", status_name="state", cache=None, **opts(server)
    )
    assert out.columns == ["p", "answer", "state"]


def test_rerun_sends_only_what_is_not_done(server: sim.SimServer, tmp_path: Path) -> None:
    cache = tmp_path / "c.duckdb"
    first = pl.DataFrame({"p": ["a", "b", "[[status:400]]"]})
    out1 = first.llm.map("p", "m", cache=cache, **opts(server))
    assert out1["status"].to_list() == ["done", "done", "failed"]
    server.reset()
    bigger = pl.DataFrame({"p": ["a", "b", "[[status:400]]", "c"]})
    out2 = bigger.llm.map("p", "m", cache=cache, **opts(server))
    assert out2["status"].to_list() == ["done", "done", "failed", "done"]
    # "a" and "b" came from the store; the failed row was tried again; "c" is new
    assert server.stats()["per_prompt"] == {"[[status:400]]": 1, "c": 1}


def test_model_switch_is_a_different_request(server: sim.SimServer, tmp_path: Path) -> None:
    cache = tmp_path / "c.duckdb"
    df = pl.DataFrame({"p": ["same prompt"]})
    a = df.llm.map("p", "model-a", cache=cache, **opts(server))
    b = df.llm.map("p", "model-b", cache=cache, **opts(server))
    c = df.llm.map("p", "model-a", temperature=0.7, cache=cache, **opts(server))
    assert a["result"][0] == sim.expected_text("model-a", "same prompt")
    assert b["result"][0] == sim.expected_text("model-b", "same prompt")
    assert c["result"][0] == sim.expected_text("model-a", "same prompt")
    assert server.stats()["requests"] == 3


def test_server_error_retried_and_attempts_stored(server: sim.SimServer, tmp_path: Path) -> None:
    cache = tmp_path / "c.duckdb"
    out = pl.DataFrame({"p": ["[[flaky:500:2]]", "ok"]}).llm.map("p", "m", cache=cache, **opts(server))
    assert out["status"].to_list() == ["done", "done"]
    assert server.stats()["per_prompt"]["[[flaky:500:2]]"] == 3
    with duckdb.connect(str(cache), read_only=True) as con:
        rows = dict(con.execute("select prompt, attempts from requests").fetchall())
    assert rows == {"[[flaky:500:2]]": 3, "ok": 1}


def test_rate_limited_prompt_honours_retry_after_and_finishes(server: sim.SimServer) -> None:
    out = pl.DataFrame({"p": ["[[flaky429:2]]"]}).llm.map("p", "m", cache=None, **opts(server))
    assert out["status"].to_list() == ["done"]
    assert server.stats()["status_counts"].get("429") == 2


def test_auth_error_stops_the_run(tmp_path: Path) -> None:
    with sim.serve(fail_mode=401) as server:
        df = pl.DataFrame({"p": [f"p{i}" for i in range(2000)]})
        with pytest.raises(AuthenticationError) as info:
            df.llm.map("p", "m", cache=tmp_path / "c.duckdb", concurrency=8, **opts(server))
        sent = server.stats()["requests"]
    assert "API key" in str(info.value)
    assert sent <= 8  # the first wave, nothing after the first 401


def test_bad_prompt_fails_only_its_row(server: sim.SimServer, tmp_path: Path) -> None:
    cache = tmp_path / "c.duckdb"
    out = pl.DataFrame({"p": ["a", "[[status:400]]", "b"]}).llm.map("p", "m", cache=cache, **opts(server))
    assert out["status"].to_list() == ["done", "failed", "done"]
    with duckdb.connect(str(cache), read_only=True) as con:
        err, kind = con.execute("select error, error_kind from requests where status = 'failed'").fetchone()
    assert kind == "bad_request" and "400" in err


class Address(BaseModel):
    city: str
    zip: str | None


class Person(BaseModel):
    name: str
    age: int
    role: Literal["admin", "user"]
    born: date
    addresses: list[Address]
    manager: Address | None


def test_structured_output_nested(server: sim.SimServer) -> None:
    df = pl.DataFrame({"p": ["alice", "bob", None]})
    out = df.llm.map("p", "m", response_model=Person, cache=None, **opts(server))
    assert out.schema["result"] == pl.Struct(
        {
            "name": pl.String,
            "age": pl.Int64,
            "role": pl.Enum(["admin", "user"]),  # a Literal of labels is an Enum
            "born": pl.Date,
            "addresses": pl.List(pl.Struct({"city": pl.String, "zip": pl.String})),
            "manager": pl.Struct({"city": pl.String, "zip": pl.String}),
        }
    )
    rows = out.unnest("result")
    schema = polars_llm._request.structured.response_format(Person)
    for prompt, row in zip(["alice", "bob"], rows.head(2).iter_rows(named=True), strict=True):
        expected = Person.model_validate(sim.expected_json(schema["json_schema"]["schema"], "m", prompt))
        assert row["name"] == expected.name and row["born"] == expected.born
        assert row["addresses"] == [a.model_dump() for a in expected.addresses]
    assert out["status"].to_list() == ["done", "done", "null"]
    assert rows.filter(pl.col("role").is_in(["admin", "user"])).height == 2


def test_invalid_structured_output_retried_then_failed(server: sim.SimServer, tmp_path: Path) -> None:
    cache = tmp_path / "c.duckdb"
    df = pl.DataFrame({"p": ["[[bad_json:1]]", "[[bad_json]]"]})
    out = df.llm.map("p", "m", response_model=Address, max_attempts=3, cache=cache, **opts(server))
    assert out["status"].to_list() == ["done", "failed"]
    with duckdb.connect(str(cache), read_only=True) as con:
        err, kind, attempts = con.execute(
            "select error, error_kind, attempts from requests where status = 'failed'"
        ).fetchone()
    assert kind == "output_validation" and attempts == 3
    assert "raw output:" in err


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"timeout": -1}, "timeout"),
        ({"rpm_limit": 0}, "rpm_limit"),
        ({"temperature": 5}, "temperature"),
        ({"base_url": "ftp://x"}, "base_url"),
        ({"response_model": dict}, "response_model"),
    ],
)
def test_invalid_options_raise_config_error_before_any_request(
    server: sim.SimServer, kwargs: dict[str, object], match: str
) -> None:
    options = opts(server, cache=None)
    options.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        pl.col("p").llm.map("m", **options)
    assert server.stats()["requests"] == 0


def test_missing_model_and_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MODEL", raising=False)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="model"):
        pl.col("p").llm.map(api_key="k")
    with pytest.raises(ConfigError, match="API key"):
        pl.col("p").llm.map("m")


def test_model_and_key_from_dotenv(
    server: sim.SimServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MODEL", raising=False)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("MODEL=env-model\nOPENROUTER_API_KEY=sk-from-dotenv\n")
    out = pl.DataFrame({"p": ["hi"]}).llm.map("p", base_url=server, cache=None, progress=False)
    assert out["result"][0] == sim.expected_text("env-model", "hi")


def test_non_string_column_is_rejected(server: sim.SimServer) -> None:
    with pytest.raises(ColumnTypeError, match="Int64"):
        pl.DataFrame({"p": [1, 2]}).llm.map("p", "m", cache=None, **opts(server))
    assert server.stats()["requests"] == 0


def test_empty_frame_sends_nothing(server: sim.SimServer) -> None:
    out = pl.DataFrame({"p": []}, schema={"p": pl.String}).llm.map("p", "m", cache=None, **opts(server))
    assert out.height == 0 and out.schema["result"] == pl.String
    assert server.stats()["requests"] == 0


def test_custom_worker(tmp_path: Path) -> None:
    seen: list[str] = []

    async def worker(prompt: str) -> str:
        seen.append(prompt)
        return prompt.upper()

    out = pl.DataFrame({"p": ["a", "b", "a"]}).llm.map(
        "p", worker=worker, cache=tmp_path / "c.duckdb", progress=False
    )
    assert out["result"].to_list() == ["A", "B", "A"]
    assert sorted(seen) == ["a", "b"]


def test_content_key_is_stable() -> None:
    from polars_llm._request.keys import KeyMaker, request_fingerprint

    fingerprint = request_fingerprint(
        base_url="https://openrouter.ai/api/v1/",
        model="openai/gpt-4o-mini",
        system="You label reviews.",
        params={"temperature": 0.0},
        schema=None,
    )
    # If this changes, every user's cache is silently invalidated: bump KEY_VERSION deliberately instead.
    assert KeyMaker(fingerprint).key("Great kettle, arrived late.") == "c71732a8b5d76932cf5f52b004861558"


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """SIGINT handled as in a script or plain cell. `_thread.interrupt_main` does nothing while SIGINT is
    ignored, and a process started in the background (`nohup`, `bash -c '... &'`) inherits it ignored:
    three CI runs launched that way lost the interrupt until this fixture."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.usefixtures("default_sigint")
def test_interrupted_run_resumes_without_paying_twice(tmp_path: Path) -> None:
    threads_before = set(threading.enumerate())
    cache = tmp_path / "c.duckdb"
    n, concurrency, flush_rows = 600, 8, 50
    df = pl.DataFrame({"p": [f"row {i}" for i in range(n)]})
    with sim.serve(latency=0.01) as server:
        run = opts(server, cache=cache, concurrency=concurrency, flush_rows=flush_rows)
        stop = threading.Event()

        def interrupt_when_half_done() -> None:
            while not stop.is_set():
                if server.stats(per_prompt=False)["ok"] >= n // 2:
                    # the rest is held until the interrupt has landed, however late this thread gets to
                    # run on a loaded machine; a lost interrupt releases it after 20 s and the run
                    # finishes ("DID NOT RAISE") instead of hanging the suite
                    server.configure(latency=20.0)
                    _thread.interrupt_main()
                    stop.wait(20.0)
                    server.configure(latency=0.01)
                    return
                stop.wait(0.005)

        watcher = threading.Thread(target=interrupt_when_half_done)
        watcher.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                df.llm.map("p", "m", **run)
        finally:
            stop.set()
            watcher.join()
        server.configure(latency=0.01)
        first = server.stats(per_prompt=False)["requests"]
        with duckdb.connect(str(cache), read_only=True) as con:
            (kept,) = con.execute("select count(*) from requests where status = 'done'").fetchone()
        assert kept >= n // 2 - concurrency  # what finished before the interrupt was flushed
        out = df.llm.map("p", "m", **run)
        total = server.stats(per_prompt=False)["requests"]
    assert out["status"].unique().to_list() == ["done"]
    assert out["result"].to_list() == [sim.expected_text("m", f"row {i}") for i in range(n)]
    assert first < n
    assert total <= n + concurrency
    assert set(threading.enumerate()) <= threads_before  # no portal, worker or writer thread left
