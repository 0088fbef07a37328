"""Streamed (out-of-core) runs: ``lf.llm.map(...)`` sinks and ``polars-llm run`` go chunk by chunk through
one session. Real HTTP to the simulator, real DuckDB files and Parquet/CSV/NDJSON files. Memory is
measured in ``benchmarks/outofcore.py``; here: the results, what is sent, interrupts and budgets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl
import pytest

import polars_llm  # noqa: F401  (registers .llm)
from polars_llm import sim
from polars_llm.cli import main as cli_main
from reliability_utils import wait_for

MODEL = "sim/stream"
HERE = Path(__file__).resolve().parent


@pytest.fixture
def server() -> Iterator[sim.SimServer]:
    with sim.serve() as s:
        yield s


def prompts_file(path: Path, n: int, distinct: int) -> pl.DataFrame:
    """``n`` rows whose prompts repeat every ``distinct`` rows (so repeats fall in later chunks)."""
    frame = pl.DataFrame({"id": range(n)}).with_columns(q=pl.format("prompt {}", pl.col("id") % distinct))
    frame.write_parquet(path, row_group_size=250)
    return frame


def opts(server: str, cache: Path, **extra: object) -> dict[str, object]:
    return {"base_url": server, "api_key": "k", "cache": cache, "progress": False, **extra}


def test_a_lazy_sink_streams_in_chunks_and_matches_the_in_memory_result(
    server: sim.SimServer, tmp_path: Path
) -> None:
    frame = prompts_file(tmp_path / "in.parquet", 3_000, 1_000)
    out = tmp_path / "out.parquet"
    lf = pl.scan_parquet(tmp_path / "in.parquet").llm.map(
        "q", MODEL, **opts(server, tmp_path / "c.duckdb", chunk_rows=400)
    )
    assert lf.collect_schema() == pl.Schema(
        {"id": pl.Int64, "q": pl.String, "result": pl.String, "status": pl.String}
    )
    assert server.stats()["requests"] == 0  # nothing runs until the sink
    lf.sink_parquet(out)
    got = pl.read_parquet(out)
    assert got["id"].to_list() == frame["id"].to_list()  # every row once, in order
    assert got["result"].to_list() == [sim.expected_text(MODEL, q) for q in frame["q"]]
    assert set(got["status"]) == {"done"}
    stats = server.stats()
    assert stats["requests"] == 1_000 and set(stats["per_prompt"].values()) == {1}  # repeats: from the cache


def test_a_lazy_head_or_input_filter_sends_only_what_it_needs(server: sim.SimServer, tmp_path: Path) -> None:
    prompts_file(tmp_path / "in.parquet", 2_000, 2_000)
    lf = pl.scan_parquet(tmp_path / "in.parquet").llm.map("q", MODEL, **opts(server, tmp_path / "c.duckdb"))
    assert lf.head(5).collect()["id"].to_list() == [0, 1, 2, 3, 4]
    assert server.stats()["requests"] <= 5 * 2  # the first chunk's first rows (a few extra at most)
    server.reset()
    few = lf.filter(pl.col("id").is_in([7, 1500])).collect()
    assert few["result"].to_list() == [
        sim.expected_text(MODEL, "prompt 7"),
        sim.expected_text(MODEL, "prompt 1500"),
    ]
    assert server.stats()["per_prompt"].keys() == {"prompt 7", "prompt 1500"}  # filtered before sending
    done = lf.filter(pl.col("status") == "done").select(pl.len()).collect().item()
    assert done == 2_000


def test_cli_run_streams_every_format_and_sends_each_prompt_once(
    server: sim.SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLARS_LLM_BASE_URL", server)
    monkeypatch.setenv("OPENROUTER_API_KEY", "k")
    frame = prompts_file(tmp_path / "in.parquet", 1_200, 300)
    for fmt in ("parquet", "csv", "jsonl"):
        args = [
            "run",
            "in.parquet",
            "--column",
            "q",
            "--model",
            MODEL,
            "-o",
            f"out.{fmt}",
            "-q",
            "--chunk-rows",
            "250",
        ]
        assert cli_main(args) == 0
        read = {"parquet": pl.read_parquet, "csv": pl.read_csv, "jsonl": pl.read_ndjson}[fmt]
        got = read(tmp_path / f"out.{fmt}")
        assert got["id"].to_list() == frame["id"].to_list()
        assert got["result"].to_list() == [sim.expected_text(MODEL, q) for q in frame["q"]]
    assert server.stats()["requests"] == 300


def test_a_budget_stop_in_a_streamed_cli_run_writes_every_row(
    server: sim.SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLARS_LLM_BASE_URL", server)
    monkeypatch.setenv("OPENROUTER_API_KEY", "k")
    prompts_file(tmp_path / "in.parquet", 1_000, 1_000)
    budget = 0.0002
    args = [
        "run",
        "in.parquet",
        "--column",
        "q",
        "--model",
        "sim/echo",
        "-o",
        "out.parquet",
        "-q",
        "--chunk-rows",
        "100",
        "--max-tokens",
        "16",
        "--max-cost",
        str(budget),
    ]
    assert cli_main(args) == 1
    assert "max_cost reached" in capsys.readouterr().err
    got = pl.read_parquet(tmp_path / "out.parquet")
    assert got.height == 1_000 and got["id"].to_list() == list(range(1_000))
    assert set(got["status"]) == {"done", "pending"}
    assert server.stats()["cost"] <= budget  # across every chunk: one budget for the whole stream
    done = int((got["status"] == "done").sum())
    with duckdb.connect(str(tmp_path / ".polars_llm" / "cache.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM requests WHERE status = 'done'").fetchall()[0][0] == done


CHILD = """
import sys, time, polars as pl, polars_llm
url, src, out, cache = sys.argv[1:5]
lf = pl.scan_parquet(src).llm.map("q", "sim/stream", base_url=url, api_key="k", cache=cache, progress=False,
                                  concurrency=4, chunk_rows=200, flush_interval=0.1)
print("started", flush=True)
seen = 0
try:
    try:
        lf.sink_parquet(out)
        print("finished", flush=True)
    except KeyboardInterrupt:
        seen += 1
        time.sleep(0.5)  # Polars may raise the interrupt once more while the query winds down
except KeyboardInterrupt:
    seen += 1
for _ in range(10):
    try:
        time.sleep(0.1)
    except KeyboardInterrupt:
        seen += 1
print("interrupted", seen, flush=True)
"""


def test_interrupting_a_lazy_sink_keeps_what_finished_and_the_rerun_completes_it(tmp_path: Path) -> None:
    frame = prompts_file(tmp_path / "in.parquet", 2_000, 2_000)
    cache = tmp_path / "c.duckdb"
    with sim.serve(latency=0.02) as server:
        env = {**os.environ, "PYTHONPATH": str(HERE.parents[1] / "src")}
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                server,
                str(tmp_path / "in.parquet"),
                str(tmp_path / "o.parquet"),
                str(cache),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        wait_for(lambda: server.stats(per_prompt=False)["ok"] >= 300, what="300 answers", timeout=120)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert "interrupted" in out and "finished" not in out, (out, err)
        assert int(out.split()[-1]) <= 2
        with duckdb.connect(str(cache), read_only=True) as con:
            done = con.execute("SELECT count(*) FROM requests WHERE status = 'done'").fetchall()[0][0]
        assert 0 < done < 2_000
        server.reset()
        server.configure(latency=0.0)
        got = (
            pl.scan_parquet(tmp_path / "in.parquet")
            .llm.map("q", "sim/stream", **opts(server, cache))
            .collect()
        )
        assert server.stats()["requests"] <= 2_000 - done  # nothing finished is paid twice
    assert got["result"].to_list() == [sim.expected_text("sim/stream", q) for q in frame["q"]]
    assert got["status"].unique().to_list() == ["done"]
