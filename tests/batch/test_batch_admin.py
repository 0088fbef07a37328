"""Batch mode around the edges: providers without a batch API, listing and cancelling batches (Python and
CLI), the progress output, secrets, and the store's migration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

import polars_llm
from batch_utils import Background, calls, query, wait_until
from polars_llm import sim
from polars_llm._batch.client import BatchClient
from polars_llm._store import migrations as _migrations
from polars_llm._store.store import Store
from polars_llm.cli import main
from polars_llm.exceptions import BatchUnsupportedError, FatalError

KEY = "sk-batch-SECRET-admin-key"
OPTS: dict[str, Any] = {"api_key": KEY, "mode": "batch", "progress": False, "poll_interval": 0.01}


def run(server: str | None, cache: Path, prompts: list[str], **options: Any) -> pl.DataFrame:
    frame = pl.DataFrame({"prompt": prompts})
    if server is not None:
        options["base_url"] = server
    return frame.llm.map("prompt", "m", cache=cache, **(OPTS | options))


# -- providers without a batch API ---------------------------------------------------------------------------


def test_openrouter_is_refused_before_any_network_call(
    cache_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POLARS_LLM_BASE_URL", raising=False)

    async def no_network(self: BatchClient) -> None:
        raise AssertionError("a network client was opened")

    monkeypatch.setattr(BatchClient, "__aenter__", no_network)
    with pytest.raises(BatchUnsupportedError, match=r"openrouter\.ai") as info:
        run(None, cache_path, ["a", "b"])
    assert isinstance(info.value, FatalError)
    assert info.value.base_url == polars_llm.DEFAULT_BASE_URL
    assert "nothing was sent" in str(info.value)


def test_a_server_without_batch_endpoints_gets_one_clear_error_before_any_upload(cache_path: Path) -> None:
    with sim.serve(batch_api=False) as server:
        with pytest.raises(BatchUnsupportedError) as info:
            run(server, cache_path, ["a", "b"])
        assert str(server) in str(info.value) and info.value.base_url == str(server)
        assert "nothing was uploaded" in str(info.value)
        seen = calls(server)
        assert "POST /files" not in seen and "GET /batches" in seen  # asked, never uploaded
        assert server.stats(per_prompt=False)["batch"]["uploads"] == 0
        # the same from the command line: exit code 1, the URL named
        src = cache_path.parent / "in.csv"
        src.write_text("prompt\nx\n")
        code = main(["run", str(src), "--column", "prompt", "-o", str(cache_path.parent / "out.csv"),
                     "--model", "m", "--base-url", str(server), "--batch", "--quiet",
                     "--cache", str(cache_path), "--api-key-env", "BATCH_TEST_KEY"])  # fmt: skip
        assert code == 2  # no key in BATCH_TEST_KEY: refused before anything
    assert polars_llm.batches(cache_path).height == 0


def test_cli_run_batch_against_a_server_without_batches_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    src = tmp_path / "in.csv"
    src.write_text("prompt\nx\ny\n")
    with sim.serve(batch_api=False) as server:
        code = main(["run", str(src), "--column", "prompt", "-o", str(tmp_path / "out.csv"), "--model", "m",
                     "--base-url", str(server), "--batch", "--quiet",
                     "--cache", str(tmp_path / "c.duckdb")])  # fmt: skip
        assert "POST /files" not in calls(server)
    err = capsys.readouterr().err
    assert code == 1 and "BatchUnsupported" not in err and str(server) in err and "no batch API" in err
    assert not (tmp_path / "out.csv").exists()


# -- listing and cancelling ----------------------------------------------------------------------------------


def test_list_and_cancel_from_python_then_the_next_run_collects_and_resubmits(
    cache_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = [f"item {i}" for i in range(10)]
    with sim.serve(batch_seconds=None, batch_done_share=0.4) as server:
        run(server, cache_path, prompts, wait=False)
        listed = polars_llm.batches(cache_path)
        assert listed.height == 1
        row = listed.row(0, named=True)
        assert row["live"] and row["requests"] == 10 and row["status"] == "validating"
        assert listed.columns[:3] == ["batch_id", "live", "status"]
        refreshed = polars_llm.batches(cache_path, refresh=True, api_key=KEY)
        assert refreshed["status"].to_list() == ["in_progress"]
        after = polars_llm.cancel_batch(row["batch_id"], cache=cache_path, api_key=KEY)
        assert after["status"] == "cancelling" and after["live"]
        assert server.stats(per_prompt=False)["batch"]["cancels"] == 1
        out = run(server, cache_path, prompts, wait=False)  # collects: 4 answered, 6 resubmitted
        assert out["status"].value_counts().sort("status").rows() == [("done", 4), ("submitted", 6)]
        listed = polars_llm.batches(cache_path)
        old = listed.filter(pl.col("batch_id") == row["batch_id"]).row(0, named=True)
        assert (old["live"], old["status"], old["rows_done"], old["rows_requeued"]) == (
            False,
            "cancelled",
            4,
            6,
        )
        assert old["cost"] is not None and old["cost"] > 0
        # the command line lists both and cancels the new one
        assert main(["batches", "--cache", str(cache_path)]) == 0
        text = capsys.readouterr().out
        new_id = listed.filter(pl.col("live"))["batch_id"].item()
        assert row["batch_id"] in text and new_id in text and "cancelled" in text
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("OPENROUTER_API_KEY", KEY)
            assert main(["batches", "cancel", new_id, "--cache", str(cache_path)]) == 0
        assert "cancelling" in capsys.readouterr().out
        assert main(["batches", "cancel", "batch_nope", "--cache", str(cache_path)]) == 2
        assert server.stats(per_prompt=False)["batch"]["cancels"] == 2
    with pytest.raises(polars_llm.ConfigError, match="no cache"):
        polars_llm.batches(cache_path.parent / "missing.duckdb")


def test_progress_shows_the_providers_request_counts_while_waiting(
    cache_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with sim.serve(batch_seconds=None) as server:
        call = Background(lambda: run(server, cache_path, [f"p{i}" for i in range(8)], progress=True))
        seen = []

        def bar_shows_counts() -> bool:
            seen.append(capfd.readouterr().err)
            return "batches=1 running: 0/8 completed, 0 failed" in "".join(seen)

        wait_until(bar_shows_counts, "the bar to show the provider's request counts")
        server.finish_batches()
        call.result()
        seen.append(capfd.readouterr().err)
    text = "".join(seen)
    assert "submitted batch batch_" in text and "8 requests" in text
    assert "completed: 8 done, 0 failed" in text
    assert "waiting for 1 batch; interrupting leaves them running" in text
    assert "8/8" in text


# -- secrets and the store -----------------------------------------------------------------------------------


def test_the_key_reaches_no_file_no_repr_and_no_batch(cache_path: Path) -> None:
    with sim.serve(api_key=KEY) as server:  # the server checks the key on every batch endpoint
        out = run(server, cache_path, ["one", "two"])
        assert set(out["status"]) == {"done"}
        [batch] = server.batches()
        uploaded = server._app.batches.files[batch["input_file_id"]].data
    assert KEY.encode() not in uploaded
    assert KEY.encode() not in cache_path.read_bytes()
    assert KEY not in repr(BatchClient(str(server), KEY, timeout=1.0))
    assert KEY not in str(polars_llm.batches(cache_path).to_dicts())


def test_a_wrong_key_stops_the_batch_run_with_the_auth_error(cache_path: Path) -> None:
    with sim.serve(api_key="the-right-one") as server:
        with pytest.raises(polars_llm.AuthenticationError):
            run(server, cache_path, ["one"])
        assert server.stats(per_prompt=False)["batch"]["uploads"] == 0


def test_migration_3_adds_the_batches_table_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "v2.duckdb"
    con = duckdb.connect(str(path))
    assert _migrations.migrate(con, path=path, target=2) == 2
    con.execute(
        "INSERT INTO requests (key, prompt, status, result, attempts) VALUES ('k', 'p', 'done', 'r', 1)"
    )
    con.close()
    with Store.open(path) as store:
        assert store.version == _migrations.CURRENT_VERSION
    step = dict(_migrations.MIGRATIONS)[3]
    with duckdb.connect(str(path)) as con:
        con.execute(step)  # applying it again changes nothing (safe to renumber on merge)
        cols = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                          "WHERE table_name = 'requests'").fetchall()}  # fmt: skip
    assert "batch_id" in cols
    assert query(path, "SELECT key, result, batch_id FROM requests") == [("k", "r", None)]
    assert query(path, "SELECT count(*) FROM batches") == [(0,)]


def test_online_rows_and_batch_rows_share_one_cache(cache_path: Path) -> None:
    """Answers from either mode serve the other: the content key does not depend on the mode."""
    with sim.serve() as server:
        run(server, cache_path, ["x", "y"], mode="online")
        out = run(server, cache_path, ["x", "y", "z"])
        assert set(out["status"]) == {"done"}
        [batch] = server.batches()
        assert batch["request_counts"]["total"] == 1  # only z
        back = run(server, cache_path, ["z"], mode="online")
        assert back["status"].to_list() == ["done"] and server.stats(per_prompt=False)["requests"] == 2


def test_a_batch_the_provider_forgot_is_given_up_only_when_old(
    cache_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with sim.serve(batch_seconds=None) as server:
        run(server, cache_path, ["a", "b"], wait=False)
        [batch] = server.batches()
        server._app.batches.batches.pop(batch["id"])  # the provider no longer knows it (404)
        young = run(server, cache_path, ["a", "b"], wait=False)
        assert set(young["status"]) == {"submitted"}  # just submitted: maybe not visible yet; kept
        assert server.stats(per_prompt=False)["batch"]["batches_created"] == 1
        with duckdb.connect(str(cache_path)) as con:
            con.execute("UPDATE batches SET submitted_at = submitted_at - INTERVAL 1 HOUR")
        capfd.readouterr()
        old = run(server, cache_path, ["a", "b"], wait=False, progress=True)
        assert set(old["status"]) == {"submitted"}  # given up, resubmitted in a new batch
        assert f"batch {batch['id']} not found" in capfd.readouterr().err
        assert server.stats(per_prompt=False)["batch"]["batches_created"] == 2
    [(status, requeued)] = query(
        cache_path, f"SELECT status, rows_requeued FROM batches WHERE batch_id = '{batch['id']}'"
    )
    assert (status, requeued) == ("not_found", 2)
