"""The ``polars-llm`` command line: in-process through ``main(argv)`` and through the real entry point
(a subprocess), against the simulator over real HTTP. Synchronised on simulator stats, never on sleeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import pytest

from polars_llm import cli, sim
from polars_llm._store.store import Store

MODEL = "sim/cli-model"
KEY = "sk-cli-secret-123"
ENTRY = Path(sys.executable).with_name("polars-llm")


@pytest.fixture(scope="module")
def server() -> Iterator[sim.SimServer]:
    with sim.serve() as s:
        yield s


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: sim.SimServer) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLARS_LLM_BASE_URL", server)
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    monkeypatch.setenv("MODEL", MODEL)
    server.reset()
    server.configure(latency=0.0, fail_mode=None)


def cli_main(*argv: str) -> int:
    return cli.main(list(argv))


def expected(prompt: str, system: str | None = None) -> str:
    return sim.expected_text(MODEL, prompt, system)


def reviews(n: int = 6) -> pl.DataFrame:
    prompts = ["good", "bad", "good", None, "[[status:400]]", "ok"][:n]
    return pl.DataFrame({"id": list(range(len(prompts))), "prompt": prompts, "extra": [1.5] * len(prompts)})


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll a condition (simulator stats, a file) until it holds."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        pause.wait(0.01)


# ------------------------------------------------------------------------------------------------- run


def test_run_csv_to_parquet_passes_columns_through(server: sim.SimServer, tmp_path: Path) -> None:
    reviews().write_csv("in.csv")
    assert cli_main("run", "in.csv", "--column", "prompt", "--output", "out.parquet", "--quiet") == 0
    out = pl.read_parquet("out.parquet")
    assert out.columns == ["id", "prompt", "extra", "result", "status"]
    assert out["id"].to_list() == list(range(6))
    assert out["status"].to_list() == ["done", "done", "done", "null", "failed", "done"]
    assert out["result"].to_list() == [
        expected("good"),
        expected("bad"),
        expected("good"),
        None,
        None,
        expected("ok"),
    ]
    assert server.stats()["requests"] == 4  # duplicates once, null never
    assert not list(tmp_path.glob(".out.parquet.partial*"))


def test_run_is_resumable_through_the_cache(server: sim.SimServer) -> None:
    reviews().write_parquet("in.parquet")
    args = ("run", "in.parquet", "--column", "prompt", "--output", "a.jsonl", "--quiet")
    assert cli_main(*args) == 0
    sent = server.stats()["requests"]
    assert cli_main(*args[:-2], "b.jsonl", "--quiet") == 0
    assert server.stats()["requests"] == sent + 1  # only the failed row is tried again
    assert pl.read_ndjson("a.jsonl").equals(pl.read_ndjson("b.jsonl"))


def test_run_ndjson_to_csv_with_system_model_and_limits(server: sim.SimServer, tmp_path: Path) -> None:
    reviews(3).write_ndjson("in.ndjson")
    code = cli_main(
        "run", "in.ndjson", "--column", "prompt", "--output", "sub/out.csv", "--model", "other/m",
        "--system", "be kind", "--concurrency", "2", "--rpm-limit", "6000", "--tpm-limit", "100000",
        "--cache", "my.duckdb", "--quiet",
    )  # fmt: skip
    assert code == 0
    out = pl.read_csv(tmp_path / "sub" / "out.csv")
    assert out["result"].to_list() == [
        sim.expected_text("other/m", p, "be kind") for p in ["good", "bad", "good"]
    ]
    assert (tmp_path / "my.duckdb").is_file()


def test_run_with_schema(tmp_path: Path) -> None:
    (tmp_path / "labels.py").write_text(
        "from pydantic import BaseModel\n\nclass Label(BaseModel):\n    sentiment: str\n    stars: int\n"
    )
    pl.DataFrame({"prompt": ["x", "y"]}).write_csv("in.csv")
    assert (
        cli_main("run", "in.csv", "--column", "prompt", "--schema", "labels:Label", "-o", "o.parquet", "-q")
        == 0
    )
    out = pl.read_parquet("o.parquet")
    assert out.schema["result"] == pl.Struct({"sentiment": pl.String, "stars": pl.Int64})
    assert (
        cli_main("run", "in.csv", "--column", "prompt", "--schema", "labels.py:Label", "-o", "o.csv", "-q")
        == 0
    )
    texts = pl.read_csv("o.csv")["result"].to_list()
    assert [json.loads(t) for t in texts] == out["result"].to_list()


def test_api_key_env_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pl.DataFrame({"prompt": ["k"]}).write_csv("in.csv")
    with sim.serve(api_key="sk-other") as guarded:
        monkeypatch.setenv("POLARS_LLM_BASE_URL", guarded)
        monkeypatch.setenv("MY_KEY", "sk-other")
        assert (
            cli_main("run", "in.csv", "--column", "prompt", "-o", "a.csv", "--api-key-env", "MY_KEY", "-q")
            == 0
        )
        assert guarded.stats()["ok"] == 1
        monkeypatch.delenv("OPENROUTER_API_KEY")
        (tmp_path / ".env").write_text("OPENROUTER_API_KEY=sk-other\n")
        assert (
            cli_main("run", "in.csv", "--column", "prompt", "-o", "b.csv", "--cache", "c2.duckdb", "-q") == 0
        )
        assert guarded.stats()["ok"] == 2


@pytest.mark.parametrize(
    ("setup", "argv", "message"),
    [
        (None, ["run", "missing.csv", "--column", "prompt", "-o", "o.csv"], "no such file"),
        ("csv", ["run", "in.csv", "--column", "text", "-o", "o.csv"], "has no column 'text'"),
        ("csv", ["run", "in.csv", "--column", "prompt", "-o", "o.xlsx"], "output format"),
        ("txt", ["run", "in.txt", "--column", "prompt", "-o", "o.csv"], "input format"),
        ("garbage", ["run", "in.parquet", "--column", "prompt", "-o", "o.csv"], "cannot read input"),
        ("ints", ["run", "in.parquet", "--column", "prompt", "-o", "o.csv"], "must hold text"),
        ("taken", ["run", "in.csv", "--column", "prompt", "-o", "o.csv"], "already has column(s) result"),
        (
            "csv",
            ["run", "in.csv", "--column", "prompt", "-o", "o.csv", "--schema", "nope:X"],
            "cannot import",
        ),
        (
            "csv",
            ["run", "in.csv", "--column", "prompt", "-o", "o.csv", "--schema", "json:dumps"],
            "not a pydantic",
        ),
        ("csv", ["run", "in.csv", "--column", "prompt", "-o", "o.csv", "--schema", "Model"], "module:Model"),
        ("csv", ["run", "in.csv", "--column", "prompt", "-o", "o.csv", "--api-key-env", "A-B"], "not a key"),
        (
            "csv",
            ["run", "in.csv", "--column", "prompt", "-o", "o.csv", "--concurrency", "0"],
            "concurrency must be an integer between 1",
        ),
        ("csv", ["run", "in.csv", "-o", "o.csv"], "--column"),
        (
            "csv",
            ["run", "in.csv", "--column", "prompt", "-o", "o.csv", "--api-key", "sk-x"],
            "never taken as arguments",
        ),
        ("csv", ["run", "in.csv", "--column", "prompt", "-o", "o.csv", "--temperature", "9"], "temperature"),
    ],
)
def test_run_usage_errors_exit_2(
    setup: str | None,
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    server: sim.SimServer,
) -> None:
    if setup == "csv":
        pl.DataFrame({"prompt": ["a"]}).write_csv("in.csv")
    elif setup == "txt":
        Path("in.txt").write_text("prompt\na\n")
    elif setup == "garbage":
        Path("in.parquet").write_bytes(b"this is not parquet at all")
    elif setup == "ints":
        pl.DataFrame({"prompt": [1, 2]}).write_parquet("in.parquet")
    elif setup == "taken":
        pl.DataFrame({"prompt": ["a"], "result": [1]}).write_csv("in.csv")
    assert cli_main(*argv) == 2
    assert message in capsys.readouterr().err
    assert server.stats()["requests"] == 0
    assert not Path("o.csv").exists()


def test_missing_key_and_model_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pl.DataFrame({"prompt": ["a"]}).write_csv("in.csv")
    monkeypatch.delenv("OPENROUTER_API_KEY")
    assert cli_main("run", "in.csv", "--column", "prompt", "-o", "o.csv") == 2
    assert "no API key: set OPENROUTER_API_KEY" in capsys.readouterr().err
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    monkeypatch.delenv("MODEL")
    assert cli_main("run", "in.csv", "--column", "prompt", "-o", "o.csv") == 2
    assert "no model: pass --model" in capsys.readouterr().err


def test_rejected_key_exits_1_without_showing_it(
    server: sim.SimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    pl.DataFrame({"prompt": ["a", "b"]}).write_csv("in.csv")
    server.configure(fail_mode=401)
    assert cli_main("run", "in.csv", "--column", "prompt", "-o", "o.csv", "-q") == 1
    captured = capsys.readouterr()
    assert "401" in captured.err and KEY not in captured.err + captured.out
    assert not Path("o.csv").exists()


# ----------------------------------------------------------------------------------------- status/export


def test_status_and_export(server: sim.SimServer, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    reviews().write_csv("in.csv")
    assert cli_main("run", "in.csv", "--column", "prompt", "-o", "o.csv", "-q") == 0
    capsys.readouterr()
    assert cli_main("status") == 0
    text = capsys.readouterr().out
    assert "rows: 4  done=3 failed=1" in text
    assert f"  {MODEL}: done=3 failed=1" in text
    assert "errors (failed rows): bad_request=1" in text
    assert "tokens: in=" in text and "cost: $" in text
    assert cli_main("status", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["by_status"] == {"done": 3, "failed": 1}
    assert summary["tokens_in"] > 0 and summary["cost"] > 0

    assert cli_main("export", "--output", "all.jsonl") == 0
    rows = [json.loads(line) for line in Path("all.jsonl").read_text().splitlines()]
    assert sorted(r["status"] for r in rows) == ["done", "done", "done", "failed"]
    assert all(KEY not in json.dumps(r) for r in rows)
    assert cli_main("export", "--format", "parquet", "--output", "done.bin", "--status", "done") == 0
    assert pl.read_parquet("done.bin")["status"].to_list() == ["done"] * 3
    assert cli_main("export", "--output", "x.csv") == 2
    assert "--format jsonl|parquet" in capsys.readouterr().err


def test_status_and_export_of_a_missing_cache_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main("status", "--cache", "nope.duckdb") == 2
    assert "no cache at" in capsys.readouterr().err
    assert cli_main("export", "--cache", "nope.duckdb", "-o", "x.jsonl") == 2
    assert not Path("nope.duckdb").exists()


def test_status_of_a_foreign_file_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    Path("foreign.duckdb").write_text("hello")
    assert cli_main("status", "--cache", "foreign.duckdb") == 1
    assert "polars-llm status: error:" in capsys.readouterr().err


def test_status_and_export_of_a_prompt_map_results_store(
    server: sim.SimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    import asyncio

    from polars_llm import prompt_map

    asyncio.run(prompt_map(["a", "[[status:400]]", "a"], verbose=False))
    store = ".llm_batch_cache/runs-results.duckdb"
    assert cli_main("status", "--cache", store) == 0
    assert "rows: 3  done=2 missing=1" in capsys.readouterr().out
    assert cli_main("export", "--cache", store, "-o", "r.jsonl", "--status", "done") == 0
    assert [json.loads(line)["idx"] for line in Path("r.jsonl").read_text().splitlines()] == [0, 2]


def test_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("run", "status", "export", "demo", "sim"):
        assert cli_main(command, "--help") == 0
    assert "--api-key-env" in capsys.readouterr().out
    assert cli_main() == 2


# ------------------------------------------------------------------------------- the real entry point


def child_env(server: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL", "OPENROUTER_API_KEY")}
    env.update(POLARS_LLM_BASE_URL=server, OPENROUTER_API_KEY=KEY, MODEL=MODEL, **extra)
    return env


def test_entry_point_run_status_and_missing_key(server: sim.SimServer, tmp_path: Path) -> None:
    assert ENTRY.is_file()
    reviews().write_csv(tmp_path / "in.csv")
    done = subprocess.run(
        [str(ENTRY), "run", "in.csv", "--column", "prompt", "--output", "out.jsonl"],
        cwd=tmp_path, env=child_env(server), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "wrote 6 rows" in done.stderr and "done=4" in done.stderr
    assert "req" in done.stderr  # the progress bar
    assert pl.read_ndjson(tmp_path / "out.jsonl")["status"].to_list()[:3] == ["done"] * 3
    status = subprocess.run(
        [str(ENTRY), "status", "--json"],
        cwd=tmp_path,
        env=child_env(server),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0 and json.loads(status.stdout)["by_status"] == {"done": 3, "failed": 1}
    env = child_env(server)
    del env["OPENROUTER_API_KEY"]
    missing = subprocess.run(
        [str(ENTRY), "run", "in.csv", "--column", "prompt", "--output", "o2.csv"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "no API key" in missing.stderr


def test_entry_point_ctrl_c_keeps_finished_rows_and_resumes(server: sim.SimServer, tmp_path: Path) -> None:
    n = 300
    pl.DataFrame({"id": range(n), "prompt": [f"row {i}" for i in range(n)]}).write_parquet(
        tmp_path / "in.parquet"
    )
    server.configure(latency=0.05)  # 300 rows at concurrency 4: several seconds, interrupted long before
    proc = subprocess.Popen(
        [str(ENTRY), "run", "in.parquet", "--column", "prompt", "-o", "out.parquet", "--concurrency", "4"],
        cwd=tmp_path, env=child_env(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: server.stats(per_prompt=False)["ok"] >= 12 or proc.poll() is not None)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted: finished rows are kept" in err
    assert not (tmp_path / "out.parquet").exists()
    assert not list(tmp_path.glob(".out.parquet.partial*"))
    with Store.open(tmp_path / ".polars_llm" / "cache.duckdb") as store:
        kept = store.counts().get("done", 0)
    assert 12 - 4 <= kept < n  # every answer received before Ctrl-C (all but the ≤4 in flight) was kept

    server.configure(latency=0.0)
    server.reset()
    again = subprocess.run(
        [str(ENTRY), "run", "in.parquet", "--column", "prompt", "--output", "out.parquet", "--quiet"],
        cwd=tmp_path, env=child_env(server), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert server.stats(per_prompt=False)["requests"] == n - kept
    out = pl.read_parquet(tmp_path / "out.parquet")
    assert out["id"].to_list() == list(range(n))
    assert out["result"].to_list() == [expected(f"row {i}") for i in range(n)]
