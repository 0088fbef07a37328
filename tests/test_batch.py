"""Batch mode end to end: real HTTP to the simulator's Batch API, real DuckDB files, real subprocesses.

Batches are held by the simulator (``batch_seconds=None``) until the test ends them with
``server.finish_batches(...)``; a call that waits runs in a thread while the test waits on the
simulator's state. No sleep is used to synchronise.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

import polars_llm
from batch_utils import Background, batches_created, calls, per_prompt, query, wait_until
from polars_llm import sim
from polars_llm._pipeline.pipeline import prepare
from polars_llm.exceptions import ConfigError

SRC = str(Path(__file__).resolve().parents[1] / "src")
KEY = "sk-batch-SECRET-test-key"
OPTS: dict[str, Any] = {"api_key": KEY, "mode": "batch", "progress": False, "poll_interval": 0.01}


class Label(BaseModel):
    label: str
    stars: int


def run(server: str, cache: Path, prompts: list[str | None], **options: Any) -> pl.DataFrame:
    frame = pl.DataFrame({"prompt": prompts}, schema={"prompt": pl.String})
    return frame.llm.map("prompt", "m", base_url=server, cache=cache, **(OPTS | options))


def statuses(out: pl.DataFrame) -> dict[str, str | None]:
    return dict(zip(out["prompt"].to_list(), out["status"].to_list(), strict=True))


def download(server: sim.SimServer, file_id: str) -> bytes:
    request = urllib.request.Request(
        f"{server}/files/{file_id}/content", headers={"Authorization": "Bearer x"}
    )
    with urllib.request.urlopen(request) as resp:
        return resp.read()


# -- submit, wait, collect -----------------------------------------------------------------------------------


def test_submit_wait_collect_matches_the_online_answers_at_half_the_cost(tmp_path: Path) -> None:
    prompts: list[str | None] = [f"review {i}" for i in range(12)]
    prompts += ["review 0", None, "broken [[wrong_schema]]"]
    batch_cache, online_cache = tmp_path / "batch.duckdb", tmp_path / "online.duckdb"
    with sim.serve(batch_seconds=None) as server:
        call = Background(lambda: run(server, batch_cache, prompts, response_model=Label))
        wait_until(lambda: len(server.batches()) == 1, "the batch to be submitted")
        assert server.batches()[0]["status"] in ("validating", "in_progress")
        assert server.stats(per_prompt=False)["requests"] == 0  # nothing went online
        server.finish_batches()
        out = call.result()
        online = run(server, online_cache, prompts, response_model=Label, mode="online")
    # the same answers as online: same content, same validation, same statuses
    assert out["status"].to_list() == online["status"].to_list()
    assert out["result"].to_list() == online["result"].to_list()
    assert out["status"].value_counts().sort("status").rows() == [("done", 13), ("failed", 1), ("null", 1)]
    assert out.filter(pl.col("status") == "done")["result"].struct.field("label").null_count() == 0
    [(error_kind, error)] = query(
        batch_cache, "SELECT error_kind, error FROM requests WHERE status = 'failed'"
    )
    assert error_kind == "output_validation" and "raw output:" in error
    # cost recorded per row from the batch answers' usage: half the online price, same tokens (done rows:
    # online, the invalid answer was paid for three times, in batch mode once)
    done_rows = "SELECT key, (tokens_in, tokens_out, cost) FROM requests WHERE status = 'done'"
    batch_rows, online_rows = dict(query(batch_cache, done_rows)), dict(query(online_cache, done_rows))
    assert batch_rows.keys() == online_rows.keys() and len(batch_rows) == 12
    for key, (tokens_in, tokens_out, cost) in batch_rows.items():
        assert (tokens_in, tokens_out) == online_rows[key][:2]
        assert cost == pytest.approx(online_rows[key][2] * 0.5)
    # the store remembers the batch, collected, and each row's batch id
    [(batch_id, status, n, rows_done, rows_failed, collected)] = query(
        batch_cache,
        "SELECT batch_id, status, requests, rows_done, rows_failed, collected_at IS NOT NULL FROM batches",
    )
    assert (status, n, rows_done, rows_failed, collected) == ("completed", 13, 12, 1, True)
    assert query(batch_cache, "SELECT DISTINCT batch_id FROM requests") == [(batch_id,)]


def test_the_uploaded_file_holds_exactly_the_online_request_bodies(tmp_path: Path) -> None:
    prompts = ["alpha", "beta", "alpha", "gamma"]
    with sim.serve() as server:
        run(
            server,
            tmp_path / "c.duckdb",
            list(prompts),
            response_model=Label,
            system="Be brief.",
            max_tokens=50,
        )
        [batch] = server.batches()
        lines = [json.loads(line) for line in download(server, batch["input_file_id"]).splitlines()]
    cfg = polars_llm.resolve_config(
        model="m",
        base_url=str(server),
        cache=tmp_path / "c.duckdb",
        response_model=Label,
        system="Be brief.",
        max_tokens=50,
        **OPTS,
    )
    prepared = prepare(pl.Series("prompt", prompts), cfg)
    expected = {
        key: cfg.request.body(prompt)
        for key, prompt in zip(prepared.keys.to_list(), prepared.unique.to_list(), strict=True)
    }
    assert {line["custom_id"]: line["body"] for line in lines} == expected
    assert all(line["method"] == "POST" and line["url"] == "/v1/chat/completions" for line in lines)
    assert all("response_format" in line["body"] for line in lines)
    assert batch["endpoint"] == "/v1/chat/completions" and batch["completion_window"] == "24h"


def test_submit_without_waiting_then_a_new_process_collects(tmp_path: Path) -> None:
    cache = tmp_path / "cache.duckdb"
    prompts = [f"doc {i}" for i in range(30)]
    with sim.serve(batch_seconds=None) as server:
        out = run(server, cache, list(prompts), wait=False)
        assert set(out["status"]) == {"submitted"} and out["result"].null_count() == 30
        listed = polars_llm.batches(cache)
        assert listed.select("live", "requests").rows() == [(True, 30)]
        server.finish_batches()
        script = (
            "import json, polars as pl, polars_llm\n"
            f"df = pl.DataFrame({{'prompt': {prompts!r}}})\n"
            f"out = df.llm.map('prompt', 'm', base_url={str(server)!r}, api_key={KEY!r},"
            f" cache={str(cache)!r}, mode='batch', progress=False, poll_interval=0.01)\n"
            "print(json.dumps(out.select('status', 'result').rows()))\n"
        )
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        rows = json.loads(done.stdout.strip().splitlines()[-1])
        assert rows == [["done", sim.expected_text("m", p)] for p in prompts]
        assert (
            batches_created(server) == 1 and calls(server)["POST /files"] == 1
        )  # collected, not resubmitted
        assert set(per_prompt(server).values()) == {1}
        assert server.stats(per_prompt=False)["requests"] == 0
    assert polars_llm.batches(cache)["live"].to_list() == [False]


def test_a_key_in_a_live_batch_is_never_submitted_again(cache_path: Path) -> None:
    with sim.serve(batch_seconds=None) as server:
        first = run(server, cache_path, ["a", "b", "c"], wait=False)
        again = run(server, cache_path, ["a", "b", "c", "d"], wait=False)
        assert set(first["status"]) == set(again["status"]) == {"submitted"}
        assert [b["request_counts"]["total"] for b in server.batches()] == [3, 1]  # only "d" was new
        # online mode does not send them either: they show as submitted
        online = run(server, cache_path, ["a", "b", "c", "d", "e"], mode="online")
        assert statuses(online) == {p: "submitted" for p in "abcd"} | {"e": "done"}
        assert server.stats()["per_prompt"] == {"e": 1}
        server.finish_batches()
        final = run(server, cache_path, ["a", "b", "c", "d", "e"])
        assert set(final["status"]) == {"done"}
        assert per_prompt(server) == {p: 1 for p in "abcd"}
        assert batches_created(server) == 2


# -- every outcome -------------------------------------------------------------------------------------------


def test_an_expired_batch_is_resubmitted_on_the_next_run(
    cache_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    prompts = [f"job {i}" for i in range(10)]
    with sim.serve(batch_seconds=None, batch_done_share=0.5) as server:
        run(server, cache_path, list(prompts), wait=False)
        [expired_id] = server.finish_batches("expired")  # the first 5 answered, 5 'batch_expired'
        capfd.readouterr()
        second = run(server, cache_path, list(prompts), wait=False, progress=True)
        said = capfd.readouterr().err
        assert f"batch {expired_id} expired: 5 done, 0 failed, 5 not run: back to pending" in said
        assert "resubmitting them now" in said and "submitted batch" in said
        assert second["status"].value_counts().sort("status").rows() == [("done", 5), ("submitted", 5)]
        assert [b["request_counts"]["total"] for b in server.batches()] == [10, 5]
        server.finish_batches()
        third = run(server, cache_path, list(prompts))
    assert set(third["status"]) == {"done"}
    assert third["result"].to_list() == [sim.expected_text("m", p) for p in prompts]
    assert set(per_prompt(server).values()) == {1}  # the expired ones had not been run: run once, later
    rows = query(
        cache_path, "SELECT batch_id, status, rows_done, rows_requeued, message FROM batches ORDER BY 1"
    )
    assert rows[0][:4] == (expired_id, "expired", 5, 5) and "back to pending" in rows[0][4]
    assert rows[1][1:4] == ("completed", 5, 0)


def test_expiry_seen_while_waiting_leaves_rows_pending_for_the_next_run(
    cache_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    prompts = [f"late {i}" for i in range(4)]
    with sim.serve(batch_outcome="expired", batch_done_share=0.5) as server:
        out = run(server, cache_path, list(prompts), progress=True)
        assert out["status"].to_list() == ["done", "done", "pending", "pending"]
        assert "run the same call again to resubmit them" in capfd.readouterr().err
        assert query(cache_path, "SELECT DISTINCT error_kind FROM requests WHERE status = 'pending'") == [
            ("batch_expired",)
        ]
        server.configure(batch_outcome="completed")
        again = run(server, cache_path, list(prompts))
    assert set(again["status"]) == {"done"}
    assert batches_created(server) == 2


def test_a_failed_batch_puts_its_rows_back_and_says_why(
    cache_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with sim.serve(batch_seconds=None) as server:
        run(server, cache_path, ["x", "y"], wait=False)
        [failed_id] = server.finish_batches("failed")
        capfd.readouterr()
        out = run(server, cache_path, ["x", "y"], wait=False, progress=True)
        said = capfd.readouterr().err
        assert f"batch {failed_id} failed (batch_failed: The batch failed (simulated).)" in said
        assert "2 not run: back to pending, resubmitting them now" in said
        assert set(out["status"]) == {"submitted"}
        server.finish_batches("completed")
        assert set(run(server, cache_path, ["x", "y"])["status"]) == {"done"}
    [(status, requeued, message)] = query(
        cache_path, f"SELECT status, rows_requeued, message FROM batches WHERE batch_id = '{failed_id}'"
    )
    assert (status, requeued) == ("failed", 2) and "back to pending" in message


def test_per_request_errors_fail_their_rows_with_the_providers_message(cache_path: Path) -> None:
    prompts = [
        "fine",
        "bad [[status:400]]",
        "filtered [[content_filter]]",
        "boom [[status:500]]",
        "hidden [[error200]]",
        "flaky [[flaky:500:1]]",
    ]
    with sim.serve() as server:
        out = run(server, cache_path, list(prompts))
        assert statuses(out) == {"fine": "done"} | {p: "failed" for p in prompts[1:]}
        errors = dict(
            query(cache_path, "SELECT prompt, (error_kind, error) FROM requests WHERE status = 'failed'")
        )
        assert errors["bad [[status:400]]"][0] == "bad_request"
        assert (
            "HTTP 400" in errors["bad [[status:400]]"][1] and "simulated" in errors["bad [[status:400]]"][1]
        )
        assert errors["filtered [[content_filter]]"][0] == "content_filter"
        assert errors["boom [[status:500]]"][0] == "server_error"
        assert errors["hidden [[error200]]"] == (
            "server_error",
            "HTTP 502: Provider returned error (simulated)",
        )
        # failed rows are sent again by the next run, like online: the flaky one now succeeds
        again = run(server, cache_path, list(prompts))
    assert statuses(again)["flaky [[flaky:500:1]]"] == "done"
    assert statuses(again)["bad [[status:400]]"] == "failed"
    assert per_prompt(server)["flaky [[flaky:500:1]]"] == 2 and per_prompt(server)["fine"] == 1


def test_requests_missing_from_the_output_go_back_to_pending(cache_path: Path) -> None:
    with sim.serve() as server:
        out = run(server, cache_path, ["kept", "lost [[batch_omit]]"])
        assert statuses(out) == {"kept": "done", "lost [[batch_omit]]": "pending"}
        [(kind, error)] = query(cache_path, "SELECT error_kind, error FROM requests WHERE status = 'pending'")
        assert kind == "batch_missing" and "not in its output" in error
        assert query(cache_path, "SELECT rows_done, rows_requeued FROM batches") == [(1, 1)]


def test_batch_files_respect_the_request_and_byte_limits(cache_path: Path, tmp_path: Path) -> None:
    prompts = [f"line {i}" for i in range(7)]
    with sim.serve(batch_max_requests=3) as server:  # the server fails a batch of more than 3
        out = run(server, cache_path, list(prompts), batch_max_requests=3)
        assert set(out["status"]) == {"done"}
        assert [b["request_counts"]["total"] for b in server.batches()] == [3, 3, 1]
        limit = 1024
        wide = [f"{i} " + "x" * 300 for i in range(6)] + ["huge " + "y" * 2000]
        out = run(server, tmp_path / "bytes.duckdb", wide, batch_max_bytes=limit)
        sizes = [len(download(server, b["input_file_id"])) for b in server.batches()[3:]]
    assert all(size <= limit for size in sizes) and len(sizes) >= 2
    assert statuses(out) == {p: "done" for p in wide[:-1]} | {wide[-1]: "failed"}
    [(error,)] = query(tmp_path / "bytes.duckdb", "SELECT error FROM requests WHERE status = 'failed'")
    assert "more than batch_max_bytes=1,024" in error


def test_prompt_map_keeps_missing_and_its_store_while_batches_run(tmp_path: Path) -> None:
    store = tmp_path / "runs.duckdb"
    with sim.serve(batch_seconds=None) as server:
        options: dict[str, Any] = {
            "model_name": "m",
            "base_url": server,
            "openrouter_api_key": KEY,
            "cache_db_url": store,
            "verbose": False,
            "teardown_results": True,
            "mode": "batch",
            "poll_interval": 0.01,
        }
        rows = asyncio.run(polars_llm.prompt_map(["a", "b", "a"], wait=False, **options))
        assert [r["status"] for r in rows] == ["missing"] * 3
        assert store.exists()  # not torn down: it remembers the batch
        server.finish_batches()
        rows = asyncio.run(polars_llm.prompt_map(["a", "b", "a"], **options))
    assert [(r["status"], r["result"]) for r in rows] == [
        ("done", "m: a"),
        ("done", "m: b"),
        ("done", "m: a"),
    ]
    assert not store.exists()  # completed: torn down as usual
    assert batches_created(server) == 1


# -- refused before anything is sent -------------------------------------------------------------------------


def test_batch_mode_with_a_worker_or_an_unknown_option_is_a_config_error(cache_path: Path) -> None:
    async def worker(prompt: str) -> str:
        return prompt

    with sim.serve() as server:
        with pytest.raises(ConfigError, match="worker"):
            run(server, cache_path, ["a"], worker=worker)
        with pytest.raises(ConfigError, match="unknown option"):
            run(server, cache_path, ["a"], batch_window="12h")
        with pytest.raises(ConfigError, match="mode"):
            run(server, cache_path, ["a"], mode="offline")
        with pytest.raises(ConfigError, match="cache"):
            run(server, None, ["a"])  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="worker"):
            pl.col("prompt").llm.map("m", api_key=KEY, mode="batch", worker=worker)
        assert calls(server) == {} and server.stats(per_prompt=False)["requests"] == 0
    assert not cache_path.exists()


def test_max_cost_reserves_a_whole_batch_before_submitting_it(
    cache_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Each file's worst case is reserved at the batch price before it is uploaded; a file that does not
    fit is not uploaded, its rows stay pending, and the call stops with BudgetExceededError."""
    import math

    from polars_llm import BudgetExceededError

    price, max_tokens = (1.0, 2.0), 10  # USD per million tokens; "q0".."q4" are 2 characters each
    worst_in = math.ceil((2 / 4 + 8) * 4 / 3) + 8  # the documented reservation: no history yet
    worst = (worst_in * price[0] + max_tokens * price[1]) / 1e6 * 0.5  # at the batch price
    budget = 2.5 * worst  # the first file of 2 requests fits, the second does not
    prompts: list[str | None] = [f"q{i}" for i in range(5)]
    with sim.serve() as server:
        with pytest.raises(BudgetExceededError) as info:
            run(
                server,
                cache_path,
                prompts,
                batch_max_requests=2,
                progress=True,
                price=price,
                max_tokens=max_tokens,
                max_cost=budget,
            )
        assert calls(server)["POST /files"] == 1
    out = info.value.frame
    assert out["status"].to_list() == ["done", "done", "pending", "pending", "pending"]
    assert info.value.rows_left == 3 and info.value.spent <= budget
    assert "stopped submitting: max_cost does not cover batch file 2 (2 requests)" in capfd.readouterr().err


def test_estimate_uses_the_batch_price_in_batch_mode(cache_path: Path) -> None:
    with sim.serve() as server:
        frame = pl.DataFrame({"prompt": ["a", "b"]})
        common: dict[str, Any] = {
            "base_url": server,
            "cache": cache_path,
            "api_key": "k",
            "price": (1.0, 2.0),
            "max_tokens": 5,
        }
        online = frame.llm.estimate("prompt", "m", **common)
        batch = frame.llm.estimate("prompt", "m", mode="batch", **common)
        assert server.stats()["requests"] == 0
    assert batch.cost_expected == pytest.approx(online.cost_expected * 0.5)
    assert batch.price_in == 0.5 and batch.price_out == 1.0
