"""Fatal answers stop the run, per-row errors fail only their row, store faults fail before any request.

All through ``DataFrame.llm.map`` against the simulator over HTTP, with real DuckDB files.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from pydantic import BaseModel

import polars_llm  # noqa: F401  (registers .llm)
from polars_llm import sim
from polars_llm._config import resolve_config
from polars_llm._request.spec import request_spec
from polars_llm._store import migrations as _migrations
from polars_llm.exceptions import (
    AuthenticationError,
    EndpointUnreachableError,
    FatalError,
    InsufficientCreditsError,
    NotFoundError,
    PermissionDeniedError,
    StoreError,
)
from reliability_utils import (
    MODEL,
    dir_digests,
    expect_line,
    map_options,
    prompts,
    spawn,
    store_rows,
    wait_for,
)

CONCURRENCY = 4


def _map(server: str, frame_prompts: list[str | None], **options: Any) -> pl.DataFrame:
    frame = pl.DataFrame({"prompt": frame_prompts}, schema={"prompt": pl.String})
    return frame.llm.map("prompt", MODEL, **map_options(server, **options))


# ------------------------------------------------------------------------------------------ fatal


FATAL = [
    pytest.param(
        401, AuthenticationError, "Invalid API key (simulated)", "check OPENROUTER_API_KEY", id="401"
    ),
    pytest.param(
        403, PermissionDeniedError, "Forbidden: key limit exceeded (simulated)", "permissions", id="403"
    ),
    pytest.param(402, InsufficientCreditsError, "Insufficient credits", "add credits", id="402"),
]


@pytest.mark.parametrize(("status", "kind", "provider_message", "advice"), FATAL)
def test_fatal_answer_stops_the_run(
    status: int, kind: type[FatalError], provider_message: str, advice: str, cache_path: Path
) -> None:
    n = 400
    caught: dict[str, Any] = {}

    def run() -> None:
        try:
            _map(server, prompts(n), cache=cache_path, concurrency=CONCURRENCY)
        except BaseException as e:
            caught["error"], caught["at"] = e, time.monotonic()

    with sim.serve(latency=0.05) as server:
        thread = threading.Thread(target=run)
        thread.start()
        wait_for(lambda: server.stats(per_prompt=False)["ok"] >= 20, what="20 answers")
        server.configure(fail_mode=status)  # every request from now on gets `status`
        switched = time.monotonic()
        before = server.stats(per_prompt=False)
        thread.join(timeout=60)
        assert not thread.is_alive()
        after = server.stats(per_prompt=False)
        err = caught.get("error")
        assert isinstance(err, kind), repr(err)
        print(f"HTTP {status}: stopped {caught['at'] - switched:.3f} s after the switch")
        # the exception names the provider's message and what to do; it knows the status
        assert err.status == status
        assert provider_message in str(err) and advice in str(err)
        assert "kept in the cache" in str(err)
        # at most `concurrency` requests were sent after the switch (so after the first fatal answer, fewer)
        assert after["requests"] - before["requests"] <= CONCURRENCY
        assert after["status_counts"].get(str(status), 0) <= CONCURRENCY
        assert set(after["status_counts"]) == {"200", str(status)}  # never retried as something else
        # finished rows are kept, and the message says how many
        rows = store_rows(cache_path)
        done = rows.filter(pl.col("status") == "done")
        match = re.search(r"stopped after [\d,]+ of [\d,]+ requests \(([\d,]+) done", str(err))
        assert match is not None and int(match[1].replace(",", "")) == done.height
        assert before["ok"] - CONCURRENCY <= done.height <= after["ok"]
        assert done["result"].to_list() == [sim.expected_text(MODEL, p) for p in done["prompt"]]
        assert set(rows["status"]) == {"done", "pending"} and rows.height == n
        # once the problem is fixed, the rerun sends only what was not done
        server.configure(fail_mode=None, latency=0.0)
        server.reset()
        out = _map(server, prompts(n), cache=cache_path)
        assert server.stats(per_prompt=False)["requests"] == n - done.height
    assert out["status"].to_list() == ["done"] * n


def test_fatal_answer_does_not_wait_for_slow_requests_or_backoff(cache_path: Path) -> None:
    """In-flight requests (30 s stalls) and retry backoff are abandoned at once on a fatal answer."""
    slow = [f"slow {i} [[delay:30]]" for i in range(50)]
    frame_prompts = [*slow[:3], "flaky [[status:500]]", "bad key [[status:401]]", *slow[3:]]
    with sim.serve() as server:
        started = time.monotonic()
        with pytest.raises(AuthenticationError):
            _map(server, frame_prompts, cache=cache_path, concurrency=8, max_backoff=60.0)
        elapsed = time.monotonic() - started
        # the stalled requests were dropped by the client (the server saw the disconnects), not waited out
        wait_for(lambda: server.stats(per_prompt=False)["in_flight"] == 0, timeout=15, what="disconnects")
        stats = server.stats()
    slow_sent = sum(n for prompt, n in stats["per_prompt"].items() if prompt.startswith("slow"))
    print(f"fatal with {slow_sent} stalled requests and one retrying: stopped after {elapsed:.3f} s")
    # at most the 8 workers' first requests (stalled ones, the flaky one, the 401) and one retry; the
    # run starts gently, so fewer stalled ones may have gone before the 401 came back
    assert stats["requests"] <= 8 + 1
    assert stats["cancelled"] == slow_sent and stats["ok"] == 0
    assert stats["per_prompt"]["flaky [[status:500]]"] <= 2
    rows = store_rows(cache_path)
    assert set(rows["status"]) == {"pending"}
    # rows cut off mid-request (and the 401's row) keep the attempts they used
    attempts = dict(zip(rows["prompt"], rows["attempts"], strict=True))
    assert {p: attempts[p] for p in stats["per_prompt"]} == stats["per_prompt"]


# --------------------------------------------------------------------------------------- per row


def test_per_row_errors_fail_only_their_row(cache_path: Path) -> None:
    bad = {
        "x [[status:400]]": "bad_request",
        "y [[content_filter]]": "content_filter",
        "z [[status:422]]": "bad_request",
        "w [[status:413]]": "bad_request",
    }
    good = prompts(20)
    frame_prompts = good[:10] + list(bad) + good[10:]
    with sim.serve() as server:
        out = _map(server, frame_prompts, cache=cache_path)
        per_prompt = server.stats()["per_prompt"]
    status = dict(zip(out["prompt"], out["status"], strict=True))
    assert {p: status[p] for p in bad} == dict.fromkeys(bad, "failed")
    assert {p: status[p] for p in good} == dict.fromkeys(good, "done")
    assert out.filter(pl.col("status") == "failed")["result"].null_count() == len(bad)
    assert all(per_prompt[p] == 1 for p in bad)  # a row error is not retried
    rows = {r["prompt"]: r for r in store_rows(cache_path).to_dicts()}
    for prompt, kind in bad.items():
        row = rows[prompt]
        assert (row["status"], row["error_kind"], row["attempts"]) == ("failed", kind, 1)
        assert row["error"]
    assert "HTTP 400" in rows["x [[status:400]]"]["error"]
    assert "content filter" in rows["y [[content_filter]]"]["error"]
    assert all(rows[p]["status"] == "done" and rows[p]["error"] is None for p in good)


class Answer(BaseModel):
    label: str
    score: int


def test_output_failing_the_response_model_after_retries(cache_path: Path) -> None:
    bad = {
        "a [[wrong_schema]]": ("output_validation", 3),
        "b [[bad_json]]": ("output_validation", 3),
        "c [[length]]": ("output_truncated", 1),
    }
    recovers = "d [[wrong_schema:1]]"  # invalid once, valid on the second attempt
    good = prompts(10)
    with sim.serve() as server:
        out = _map(server, [*good, *bad, recovers], cache=cache_path, response_model=Answer, max_attempts=3)
    status = dict(zip(out["prompt"], out["status"], strict=True))
    assert [status[p] for p in [*good, recovers]] == ["done"] * (len(good) + 1)
    assert [status[p] for p in bad] == ["failed"] * len(bad)
    assert out.schema["result"] == pl.Struct({"label": pl.String, "score": pl.Int64})
    rows = {r["prompt"]: r for r in store_rows(cache_path).to_dicts()}
    for prompt, (kind, attempts) in bad.items():
        row = rows[prompt]
        assert (row["status"], row["error_kind"], row["attempts"]) == ("failed", kind, attempts)
        assert "raw output:" in row["error"]  # the model's raw text is kept for debugging
    assert rows[recovers]["status"] == "done" and rows[recovers]["attempts"] == 2


# ----------------------------------------------------------------------------------- store faults


def test_second_process_on_the_cache(sim_server: sim.SimServer, cache_path: Path) -> None:
    holder = spawn("hold", str(cache_path))
    try:
        expect_line(holder, "ready")
        with pytest.raises(StoreError) as info:
            _map(sim_server, prompts(3), cache=cache_path, cache_wait=0)
        message = str(info.value)
        assert str(cache_path) in message and f"PID {holder.pid}" in message
        assert "another notebook or process" in message
        assert info.value.path == str(cache_path)
        assert sim_server.stats()["requests"] == 0
    finally:
        holder.communicate(input="", timeout=60)
    out = _map(sim_server, prompts(3), cache=cache_path)  # released when the holder exits
    assert out["status"].to_list() == ["done"] * 3


def test_cache_directory_cannot_be_created(sim_server: sim.SimServer, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    target = blocker / "sub" / "cache.duckdb"
    with pytest.raises(StoreError) as info:
        _map(sim_server, prompts(3), cache=target)
    assert str(target) in str(info.value) and "cache=" in str(info.value)
    assert blocker.read_text() == "not a directory"
    assert sim_server.stats()["requests"] == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_cache_directory_not_writable(sim_server: sim.SimServer, tmp_path: Path) -> None:
    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(StoreError) as info:
            _map(sim_server, prompts(3), cache=locked / "cache.duckdb")
    finally:
        locked.chmod(0o700)
    assert str(locked / "cache.duckdb") in str(info.value)
    assert sim_server.stats()["requests"] == 0
    assert list(locked.iterdir()) == []


def test_missing_cache_directory_is_created(sim_server: sim.SimServer, tmp_path: Path) -> None:
    target = tmp_path / "new" / "nested" / "cache.duckdb"
    out = _map(sim_server, prompts(3), cache=target)
    assert out["status"].to_list() == ["done"] * 3 and target.is_file()


def _foreign_duckdb(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE requests (key VARCHAR, n INTEGER)")
    con.close()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: p.write_bytes(os.urandom(10_000)), id="random-bytes"),
        pytest.param(lambda p: p.write_text("a,b\n1,2\n"), id="csv-text"),
        pytest.param(_foreign_duckdb, id="foreign-duckdb"),
    ],
)
def test_foreign_file_at_the_cache_path(make: Any, sim_server: sim.SimServer, cache_path: Path) -> None:
    make(cache_path)
    before = dir_digests(cache_path.parent)
    with pytest.raises(StoreError) as info:
        _map(sim_server, prompts(3), cache=cache_path)
    assert str(cache_path) in str(info.value)
    assert "not a polars_llm cache" in str(info.value) and "untouched" in str(info.value)
    assert dir_digests(cache_path.parent) == before
    assert sim_server.stats()["requests"] == 0


def test_older_schema_version_is_migrated(sim_server: sim.SimServer, cache_path: Path) -> None:
    options = map_options(sim_server, cache=cache_path)
    cfg = resolve_config(model=MODEL, **options)
    old_prompt, old_key = "answered long ago", request_spec(cfg).key_maker().keys(["answered long ago"])[0]
    con = duckdb.connect(str(cache_path))
    assert _migrations.migrate(con, path=cache_path, target=1) == 1
    con.execute(
        "INSERT INTO requests (key, prompt, model, status, result, attempts) VALUES (?, ?, ?, 'done', ?, 1)",
        [old_key, old_prompt, MODEL, "kept from v1"],
    )
    con.close()
    out = _map(sim_server, [old_prompt, *prompts(3)], cache=cache_path)
    assert out["result"].to_list() == ["kept from v1", *(sim.expected_text(MODEL, p) for p in prompts(3))]
    assert set(sim_server.stats()["per_prompt"]) == set(prompts(3))  # the v1 answer was reused
    con = duckdb.connect(str(cache_path), read_only=True)
    try:
        versions = [r[0] for r in con.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()]
    finally:
        con.close()
    assert versions == list(range(1, _migrations.CURRENT_VERSION + 1))


def test_fatal_error_keeps_its_attributes_through_every_entry_point(sim_server: sim.SimServer) -> None:
    sim_server.configure(fail_mode=401)
    frame = pl.DataFrame({"p": prompts(3)})
    options = map_options(sim_server)
    calls = {
        "DataFrame.llm.map": lambda: frame.llm.map("p", MODEL, **options),
        "LazyFrame.llm.map": lambda: frame.lazy().llm.map("p", MODEL, **options).collect(),
        "Series.llm.map": lambda: frame["p"].llm.map(MODEL, **options),
        "lazy expression": lambda: frame.lazy().select(pl.col("p").llm.map(MODEL, **options)).collect(),
        "eager expression": lambda: frame.select(pl.col("p").llm.map(MODEL, **options)),
    }
    for name, call in calls.items():
        with pytest.raises(AuthenticationError) as info:
            call()
        assert "Invalid API key (simulated)" in str(info.value), name
        assert info.value.status == 401, name  # rebuilt by Polars from the message (or str()): facts back


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def test_wrong_base_url_stops_the_run(sim_server: sim.SimServer, cache_path: Path) -> None:
    with pytest.raises(NotFoundError) as info:
        _map(sim_server.url + "/wrong/v1", prompts(20), cache=cache_path)
    assert info.value.status == 404 and "check base_url and the model name" in str(info.value)
    assert sim_server.stats()["requests"] == 0  # 404s come from the router, not the chat endpoint
    with pytest.raises(EndpointUnreachableError) as unreachable:
        _map(_closed_port_url(), prompts(20), cache=cache_path, max_backoff=60.0)
    assert "refused" in str(unreachable.value) and "base_url" in str(unreachable.value)
