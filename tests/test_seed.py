"""The seed API (``prompt_map``, ``export_jsonl``/``export_parquet``, ``DB_URL_DEFAULT``) against the
simulator over real HTTP, with real DuckDB files in tmp_path. No sleeps as synchronisation, no timing
asserts."""

from __future__ import annotations

import asyncio
import doctest
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

import polars_llm
from polars_llm import (
    DB_URL_DEFAULT,
    export_jsonl,
    export_parquet,
    prompt_map,
    seed,
    sim,
)
from polars_llm._compat import progress as _seed_progress
from polars_llm._compat import results_db as _seed_db
from polars_llm.exceptions import AuthenticationError, ConfigError, StoreError, TransientError

MODEL = "sim/seed-model"


class Bullets(BaseModel):
    points: list[str]


@pytest.fixture(scope="module")
def server() -> Iterator[sim.SimServer]:
    with sim.serve() as s:
        yield s


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: sim.SimServer) -> None:
    """Every test runs in its own directory, against the simulator, with no key or model around."""
    monkeypatch.chdir(tmp_path)
    for name in ("MODEL", "OPENROUTER_API_KEY", "POLARS_LLM_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    server.reset()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def pm(server: str, prompts: list[str], **kwargs: Any) -> Any:
    """prompt_map against the simulator with a model and key given as in the seed."""
    kwargs.setdefault("verbose", False)
    return run(
        prompt_map(prompts, model_name=MODEL, openrouter_api_key="sk-or-test", base_url=server, **kwargs)
    )


def expected(prompt: str) -> str:
    return sim.expected_text(MODEL, prompt)


# --------------------------------------------------------------------------------------- shapes & dtypes


def test_original_shape_keeps_order_duplicates_and_marks_missing(server: sim.SimServer) -> None:
    prompts = ["b", "a", "b", "[[status:400]]", "c", "a"]
    rows = pm(server, prompts)
    assert [r["idx"] for r in rows] == list(range(6))
    assert [r["prompt"] for r in rows] == prompts
    assert list(rows[0]) == ["idx", "key", "prompt", "status", "result"]
    assert [r["status"] for r in rows] == ["done", "done", "done", "missing", "done", "done"]
    assert rows[3]["result"] is None
    assert [r["result"] for r in rows if r["status"] == "done"] == [
        expected(p) for p in prompts if "[[" not in p
    ]
    assert rows[0]["key"] == rows[2]["key"] != rows[1]["key"]
    assert len(rows[0]["key"]) == 32
    # identical prompts were sent once; the failing one was not retried (400 is a row error)
    assert server.stats()["requests"] == 4


def test_unique_shape_is_first_occurrence_order(server: sim.SimServer) -> None:
    rows = pm(server, ["b", "a", "b", "[[status:400]]", "c", "a"], output_shape="unique")
    assert [(r["idx"], r["prompt"], r["status"]) for r in rows] == [
        (0, "b", "done"),
        (1, "a", "done"),
        (3, "[[status:400]]", "missing"),
        (4, "c", "done"),
    ]


def test_return_dtypes(server: sim.SimServer) -> None:
    prompts = ["x", "y", "x"]
    assert pm(server, prompts, return_dtype="list[str]") == [expected(p) for p in prompts]
    assert pm(server, prompts, return_dtype="list[tuple[str,str]]") == [(p, expected(p)) for p in prompts]
    df = pm(server, prompts, return_dtype="polars")
    assert isinstance(df, pl.DataFrame)
    assert df.columns == ["idx", "key", "prompt", "status", "result"]
    assert df.schema["result"] == pl.String and df.schema["idx"] == pl.Int64
    assert df["result"].to_list() == [expected(p) for p in prompts]


def test_response_model_json_in_lists_struct_in_polars(server: sim.SimServer) -> None:
    rows = pm(server, ["one", "two"], response_model=Bullets)
    parsed = [Bullets.model_validate_json(r["result"]) for r in rows]
    assert all(isinstance(b.points, list) for b in parsed)
    df = pm(
        server, ["one", "two", "[[bad_json]]"], response_model=Bullets, return_dtype="polars", max_attempts=1
    )
    assert df.schema["result"] == pl.Struct({"points": pl.List(pl.String)})
    assert df["result"].struct.field("points").to_list()[:2] == [b.points for b in parsed]
    assert df["status"].to_list() == ["done", "done", "missing"]
    assert df["result"][2] is None


def test_empty_input(server: sim.SimServer) -> None:
    assert pm(server, []) == []
    assert pm(server, [], return_dtype="polars").height == 0
    assert server.stats()["requests"] == 0


# ------------------------------------------------------------------------------------------------ workers


def test_worker_runs_under_concurrency_retries_and_persistence(tmp_path: Path) -> None:
    calls: dict[str, int] = {}
    live = 0
    peak = 0

    async def worker(prompt: str) -> str:
        nonlocal live, peak
        calls[prompt] = calls.get(prompt, 0) + 1
        live += 1
        peak = max(peak, live)
        try:
            await asyncio.sleep(0)
            if prompt.startswith("flaky") and calls[prompt] == 1:
                raise TransientError("try again")
            if prompt == "boom":
                raise ValueError("bad row")
            return prompt[::-1]
        finally:
            live -= 1

    prompts = [f"p{i}" for i in range(40)] + ["flaky", "boom", "p1"]
    db = tmp_path / "runs.duckdb"
    rows = run(
        prompt_map(prompts, worker=worker, concurrency=3, cache_db_url=db, teardown=False, verbose=False)
    )
    assert peak <= 3
    assert calls["flaky"] == 2 and calls["boom"] == 1 and calls["p1"] == 1
    by_prompt = {r["prompt"]: r for r in rows}
    assert by_prompt["flaky"]["result"] == "ykalf"
    assert by_prompt["boom"]["status"] == "missing"
    assert rows[-1]["result"] == "1p"
    # a rerun on the kept store calls the worker only for what is not done
    calls.clear()
    again = run(prompt_map(prompts, worker=worker, cache_db_url=db, teardown=False, verbose=False))
    assert calls == {"boom": 1}
    assert [r["result"] for r in again] == [r["result"] for r in rows]


def test_worker_is_accepted_by_llm_map_and_shares_the_store(tmp_path: Path) -> None:
    async def shout(prompt: str) -> str:
        return prompt.upper()

    db = tmp_path / "shared.duckdb"
    rows = run(prompt_map(["a", "b"], worker=shout, cache_db_url=db, teardown=False, verbose=False))
    assert [r["result"] for r in rows] == ["A", "B"]
    out = pl.DataFrame({"q": ["b", "a", "c"]}).llm.map("q", worker=shout, cache=db, progress=False)
    assert out["result"].to_list() == ["B", "A", "C"]
    with polars_llm._store.store.Store.open(db) as store:
        assert store.counts() == {"done": 3}


def test_same_store_and_keys_as_llm_map(server: sim.SimServer, tmp_path: Path) -> None:
    db = tmp_path / "c.duckdb"
    pm(server, ["a", "b"], cache_db_url=db, teardown=False)
    sent = server.stats()["requests"]
    out = pl.DataFrame({"p": ["a", "b"]}).llm.map(
        "p", MODEL, base_url=server, api_key="k", cache=db, progress=False
    )
    assert out["result"].to_list() == [expected("a"), expected("b")]
    assert server.stats()["requests"] == sent  # answered from the store prompt_map filled


# ------------------------------------------------------------------------------- stores and teardown


def test_default_paths_teardown_and_results_store(server: sim.SimServer, tmp_path: Path) -> None:
    assert DB_URL_DEFAULT == "duckdb:///.llm_batch_cache/runs.duckdb"
    pm(server, ["a", "a", "b"])
    cache_dir = tmp_path / ".llm_batch_cache"
    assert sorted(p.name for p in cache_dir.iterdir()) == ["runs-results.duckdb"]  # no store, no WAL
    stored = _seed_db.read_results(cache_dir / "runs-results.duckdb")
    assert stored["idx"].to_list() == [0, 1, 2]
    assert stored["prompt"].to_list() == ["a", "a", "b"]
    assert stored["key"][0] == stored["key"][1]
    pm(server, ["a", "a", "b"], output_shape="unique")
    stored = _seed_db.read_results(cache_dir / "runs-results.duckdb")
    assert stored.select("idx", "prompt").rows() == [(0, "a"), (2, "b")]


def test_teardown_results_and_no_teardown(server: sim.SimServer, tmp_path: Path) -> None:
    db = tmp_path / "d" / "runs.duckdb"
    pm(server, ["a"], cache_db_url=db, teardown=True, teardown_results=True)
    assert list(db.parent.iterdir()) == []
    pm(server, ["a"], cache_db_url=db, teardown=False)
    assert sorted(p.name for p in db.parent.iterdir()) == ["runs-results.duckdb", "runs.duckdb"]


def test_store_is_kept_after_an_error_so_a_rerun_resumes(server: sim.SimServer, tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    server.configure(fail_mode=401)
    with pytest.raises(AuthenticationError):
        pm(server, ["a", "b"], cache_db_url=db)
    assert db.exists()  # teardown only after a completed run
    server.configure(fail_mode=None)
    assert pm(server, ["a", "b"], cache_db_url=db, return_dtype="list[str]") == [expected("a"), expected("b")]
    assert not db.exists()


def test_cancelled_run_keeps_finished_rows(tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    started: list[str] = []

    async def worker(prompt: str) -> str:
        started.append(prompt)
        if prompt.startswith("slow"):
            await asyncio.Event().wait()  # never set: in flight when the run is cancelled
        return prompt

    async def main() -> None:
        prompts = [f"fast{i}" for i in range(5)] + [f"slow{i}" for i in range(3)]
        # one worker takes the prompts in order: once "slow0" has started, the five fast ones are finished
        task = asyncio.create_task(
            prompt_map(prompts, worker=worker, concurrency=1, cache_db_url=db, verbose=False)
        )
        while "slow0" not in started:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main())
    with polars_llm._store.store.Store.open(db) as store:
        assert store.counts() == {"done": 5, "pending": 3}


def test_cache_db_url_forms(server: sim.SimServer, tmp_path: Path) -> None:
    for url, path in [
        ("sqlite+aiosqlite:///my_runs.db", tmp_path / "my_runs.db"),
        (f"sqlite:///{tmp_path}/abs.db", tmp_path / "abs.db"),
        ("duckdb:///sub/x.duckdb", tmp_path / "sub" / "x.duckdb"),
        (str(tmp_path / "plain.duckdb"), tmp_path / "plain.duckdb"),
        (tmp_path / "pathlike.duckdb", tmp_path / "pathlike.duckdb"),
    ]:
        pm(server, ["a"], cache_db_url=url, teardown=False)
        assert path.is_file(), url
        assert path.with_name(f"{path.stem}-results{path.suffix}").is_file(), url
    assert _seed_db.db_path("sqlite+aiosqlite:///:memory:") is None
    rows = pm(server, ["a"], cache_db_url=None, results_db_url=tmp_path / "r.duckdb")
    assert rows[0]["status"] == "done" and (tmp_path / "r.duckdb").is_file()
    with pytest.raises(ConfigError, match="local DuckDB files"):
        pm(server, ["a"], cache_db_url="postgresql+asyncpg://user:secret@host/db")


def test_results_db_url_same_as_cache_is_moved_beside(server: sim.SimServer, tmp_path: Path) -> None:
    db = tmp_path / "same.duckdb"
    with pytest.warns(UserWarning, match="same file"):
        pm(server, ["a"], cache_db_url=db, results_db_url=db, teardown=False)
    assert (tmp_path / "same-results.duckdb").is_file()


def test_two_concurrent_runs_on_one_store_do_not_tear_each_other_down(tmp_path: Path) -> None:
    db = tmp_path / "runs.duckdb"
    gate = asyncio.Event()

    async def first(prompt: str) -> str:
        return prompt

    async def second(prompt: str) -> str:
        await gate.wait()
        return prompt + "!"

    async def main() -> tuple[Any, Any]:
        slow = asyncio.create_task(prompt_map(["s"], worker=second, cache_db_url=db, verbose=False))
        fast = await prompt_map(["f"], worker=first, cache_db_url=db, verbose=False)
        assert db.exists()  # the other run still uses it
        gate.set()
        return fast, await slow

    fast, slow = run(main())
    assert fast[0]["result"] == "f" and slow[0]["result"] == "s!"
    assert not db.exists()


# -------------------------------------------------------------------------------------- configuration


def test_model_and_key_from_env_and_dotenv(server: sim.SimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POLARS_LLM_BASE_URL", server)
    monkeypatch.setenv("MODEL", "env/model")
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-env")
    rows = run(prompt_map(["q"], verbose=False))
    assert rows[0]["result"] == sim.expected_text("env/model", "q")
    monkeypatch.delenv("MODEL")
    monkeypatch.delenv("OPENROUTER_API_KEY")
    Path(".env").write_text("MODEL=dotenv/model\nOPENROUTER_API_KEY=sk-dotenv\n")
    rows = run(prompt_map(["q"], verbose=False))
    assert rows[0]["result"] == sim.expected_text("dotenv/model", "q")


def test_missing_key_or_model_fails_before_any_request(server: sim.SimServer) -> None:
    with pytest.raises(ConfigError, match="no API key"):
        run(prompt_map(["q"], model_name="m", base_url=server, verbose=False))
    with pytest.raises(ConfigError, match="no model"):
        run(prompt_map(["q"], openrouter_api_key="k", base_url=server, verbose=False))
    assert server.stats()["requests"] == 0
    assert not Path(".llm_batch_cache").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"output_shape": "wide"}, "output_shape"),
        ({"return_dtype": "pandas"}, "return_dtype"),
        ({"progress_update_every": 0}, "progress_update_every"),
        ({"concurrency": 0}, "concurrency"),
        ({"rpm_limit": -1}, "rpm_limit"),
        ({"colour": "red"}, "unknown option"),
        ({"cache": "x.duckdb"}, "cache_db_url"),
        ({"progress": False}, "verbose"),
        ({"api_key": "k2"}, "not both"),
    ],
)
def test_bad_arguments_are_config_errors(server: sim.SimServer, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        pm(server, ["q"], **kwargs)
    assert server.stats()["requests"] == 0


def test_bad_prompts(server: sim.SimServer) -> None:
    with pytest.raises(ConfigError, match="not a single string"):
        pm(server, "just one")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"prompts\[1\] is int"):
        pm(server, ["a", 3])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match=r"prompts\[0\] is NoneType"):
        pm(server, [None])  # type: ignore[list-item]
    assert pm(server, pl.Series(["a", "a"]), return_dtype="list[str]") == [expected("a")] * 2  # type: ignore[arg-type]


def test_extra_options_reach_the_engine(server: sim.SimServer) -> None:
    rows = pm(server, ["q"], system="be brief", tpm_limit=100_000, timeout=5.0, max_tokens=200)
    assert rows[0]["result"] == sim.expected_text(MODEL, "q", "be brief")


# ------------------------------------------------------------------------------------------- progress


def test_progress_lines_every_n(server: sim.SimServer, capsys: pytest.CaptureFixture[str]) -> None:
    pm(server, [f"p{i}" for i in range(5)], progress_update_every=2, verbose=True)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Total: 5 prompts (5 unique) | already done: 0 | remaining: 5"
    progress = [line for line in out if "progress:" in line]
    assert progress, out
    assert all("rpm=" in line and "done=" in line and "failed=" in line for line in progress)
    assert "done=5" in progress[-1]
    assert any(line == "Batch complete: done=5 failed=0" for line in out)
    assert any(line.startswith("Wrote 5 rows to results DB:") for line in out)
    assert any(line.startswith("Tore down the progress store at:") for line in out)


def test_verbose_false_prints_nothing(server: sim.SimServer, capsys: pytest.CaptureFixture[str]) -> None:
    pm(server, ["a", "b"], verbose=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_reporter_prints_when_every_n_more_finished() -> None:
    import io

    stats = polars_llm._engine.run.RunStats(total=10)
    out = io.StringIO()
    reporter = _seed_progress.SeedReporter(stats, every=3, verbose=True, n_prompts=10, bar=False, out=out)
    for done in (1, 2, 3, 4, 7, 7, 10):
        stats.done = done
        reporter.tick()
    reporter.close()
    lines = [line for line in out.getvalue().splitlines() if "progress:" in line]
    assert [int(line.split("done=")[1].split()[0]) for line in lines] == [3, 7, 10]


# --------------------------------------------------------------------------------------------- export


def test_export_jsonl_and_parquet_after_teardown(server: sim.SimServer, tmp_path: Path) -> None:
    pm(server, ["a", "[[status:400]]", "b", "a"])
    n = run(export_jsonl(DB_URL_DEFAULT, out="results.jsonl"))
    lines = [json.loads(line) for line in Path("results.jsonl").read_text().splitlines()]
    assert n == 3
    assert [(r["idx"], r["prompt"], r["result"]) for r in lines] == [
        (0, "a", expected("a")),
        (2, "b", expected("b")),
        (3, "a", expected("a")),
    ]
    run(export_parquet(DB_URL_DEFAULT, out=tmp_path / "r.parquet", only_done=False))
    assert pl.read_parquet(tmp_path / "r.parquet")["status"].to_list() == ["done", "missing", "done", "done"]
    # the results store itself can be named too
    assert seed.export_results(".llm_batch_cache/runs-results.duckdb", "again.jsonl", verbose=False) == 3


def test_export_falls_back_to_the_progress_store(server: sim.SimServer, tmp_path: Path) -> None:
    db = tmp_path / "keep.duckdb"
    pm(server, ["a", "[[status:400]]"], cache_db_url=db, teardown=False, teardown_results=True)
    assert seed.export_results(db, tmp_path / "o.jsonl", verbose=False) == 1
    row = json.loads((tmp_path / "o.jsonl").read_text())
    assert (row["prompt"], row["status"], row["result"]) == ("a", "done", expected("a"))


def test_export_without_any_store_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="nothing to export"):
        run(export_jsonl(tmp_path / "none.duckdb", out=tmp_path / "x.jsonl"))
    with pytest.raises(ConfigError, match="format"):
        seed.export_results(tmp_path / "none.duckdb", "x", format="csv")  # type: ignore[arg-type]


def test_public_names_and_doctests() -> None:
    assert polars_llm.prompt_map is prompt_map
    for name in ("prompt_map", "export_jsonl", "export_parquet", "DB_URL_DEFAULT"):
        assert name in polars_llm.__all__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for module in (seed, _seed_db, _seed_progress):
            result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
            assert result.failed == 0, module.__name__


def test_ctrl_c_keeps_finished_rows_and_a_rerun_resumes(server: sim.SimServer, tmp_path: Path) -> None:
    """A real SIGINT to a script running ``asyncio.run(prompt_map(...))``: the store survives."""
    script = (
        "import asyncio, os\n"
        "from polars_llm import prompt_map\n"
        "prompts = [f'row {i}' for i in range(300)]\n"
        "rows = asyncio.run(prompt_map(prompts, model_name='m', openrouter_api_key='k',\n"
        "                              base_url=os.environ['SIM_URL'], concurrency=4))\n"
        "print('rows', len(rows))\n"
    )
    env = {**os.environ, "SIM_URL": str(server)}
    server.configure(latency=0.05)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            pause = threading.Event()
            while server.stats(per_prompt=False)["ok"] < 12 and proc.poll() is None:
                assert time.monotonic() < deadline
                pause.wait(0.01)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        server.configure(latency=0.0)
    assert proc.returncode != 0 and b"KeyboardInterrupt" in err
    db = tmp_path / ".llm_batch_cache" / "runs.duckdb"
    with polars_llm._store.store.Store.open(db) as store:
        kept = store.counts().get("done", 0)
    assert 12 - 4 <= kept < 300  # all answers received before Ctrl-C (all but ≤4 in flight) were kept
    assert not (tmp_path / ".llm_batch_cache" / "runs-results.duckdb").exists()
    server.reset()
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert b"rows 300" in done.stdout
    assert f"already done: {kept} | remaining: {300 - kept}".encode() in done.stdout
    assert server.stats(per_prompt=False)["requests"] == 300 - kept
    assert not db.exists()


def test_bar_where_the_terminal_supports_it(
    server: sim.SimServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(_seed_progress, "bar_supported", lambda: True)
    pm(server, ["a", "b"], verbose=True)
    captured = capsys.readouterr()
    assert "prompt_map" in captured.err and "2/2" in captured.err
    assert "progress:" not in captured.out  # the bar replaces the printed lines
