"""The journal: every answer survives a SIGKILL, replayed once, never paid twice.

Units: the record framing (a torn tail is ignored), idempotent replay, embeddings round-trip.

Kills: a child maps ``N`` prompts with a flush window far longer than the run (``flush_interval=60``), so
the batched writer commits nothing before the kill and every answer can only survive through the
journal. The test SIGKILLs it the moment the simulator has answered a random number of requests, then:

* opening the store replays the journal: one row per prompt, no segment left, results right, attempts 1;
* at most ``CONCURRENCY`` answered prompts are missing (the answers on the wire at the kill);
* the rerun requests exactly the prompts not ``done``, each once: requests ≤ N + CONCURRENCY overall.

Three trials run in the normal suite; ``-m slow`` runs twenty-two more.

Two processes on one cache: the second waits its turn (``cache_wait``) and pays for nothing twice.
"""

from __future__ import annotations

import random
import signal
import subprocess
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pytest

import polars_llm  # noqa: F401  (registers .llm)
from polars_llm import sim
from polars_llm._store.journal import Journal, iter_segments, journal_dir, read_segment, replay
from polars_llm._store.store import Outcome, Store
from polars_llm.exceptions import StoreError
from reliability_utils import MODEL, expect_line, map_options, prompts, rerun, spawn, store_rows, wait_for

N = 600
CONCURRENCY = 8
LATENCY = 0.01


def _jobs(keys: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"key": keys, "prompt": keys, "base_url": "u", "model": "m", "params": "{}"})


def _done(key: str, at: float = 1000.5, **fields: Any) -> Outcome:
    return Outcome(
        **{
            "key": key,
            "status": "done",
            "attempts": 1,
            "finished_at": at,
            "result": f"answer {key}",
            **fields,
        }
    )


# -- units -------------------------------------------------------------------------------------------------


def test_torn_last_record_is_ignored(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    for key in ("a", "b", "c"):
        journal.append(_done(key))
    (segment,) = journal.directory.iterdir()
    whole = segment.read_bytes()
    for cut in range(1, 12):  # killed mid-write of the last record
        segment.write_bytes(whole[:-cut])
        assert [o.key for o in read_segment(segment)] == ["a", "b"]
    segment.write_bytes(whole[:-3] + bytes(b ^ 0xFF for b in whole[-3:]))  # garbled: checksum
    assert [o.key for o in read_segment(segment)] == ["a", "b"]
    segment.write_bytes(whole)
    assert [o.result for o in read_segment(segment)] == ["answer a", "answer b", "answer c"]


def test_replay_is_idempotent_and_keeps_newer_rows(tmp_path: Path) -> None:
    cache = tmp_path / "c.duckdb"
    with Store.open(cache) as store:
        store.register(_jobs(["a", "b", "c"]))
        store.write_outcomes([_done("a")])  # folded by the writer before the kill
        store.write_outcomes([_done("c", at=2000.0, tokens_in=3)])  # a later answer than the journal's
    journal = Journal(journal_dir(cache))
    journal.append(_done("a"))
    journal.append(_done("b", tokens_in=7, cost=0.5))
    journal.append(_done("c", at=1500.0))
    journal.close()
    assert len(list(iter_segments(cache))) == 1
    with Store.open(cache) as store:  # replays
        counts = store.counts()
    assert counts == {"done": 3}
    assert list(iter_segments(cache)) == []
    rows = store_rows(cache).sort("key")
    assert rows["attempts"].to_list() == [1, 1, 1]  # "a" was not applied twice
    assert rows["tokens_in"].to_list() == [None, 7, 3]  # "c" kept its newer outcome
    assert rows["result"].to_list() == ["answer a", "answer b", "answer c"]
    con = duckdb.connect(str(cache))
    try:  # the same segment again (a run killed after the commit, before the delete): nothing changes
        journal = Journal(journal_dir(cache))
        journal.append(_done("b", tokens_in=7, cost=0.5))
        journal.close()
        assert replay(con, cache) == 0
    finally:
        con.close()
    assert store_rows(cache).sort("key")["attempts"].to_list() == [1, 1, 1]


def test_odd_values_round_trip(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.append(_done("s", result="lone \ud800 surrogate, ünïcode", tokens_in=2**70, cost=float("nan")))
    journal.append(
        Outcome(key="f", status="failed", attempts=3, finished_at=2.0, error="boom", error_kind="x")
    )
    (segment,) = journal.directory.iterdir()
    odd, failed = read_segment(segment)
    assert odd.result == "lone \ud800 surrogate, ünïcode" and odd.tokens_in == 2**70
    assert (failed.status, failed.attempts, failed.error, failed.error_kind) == ("failed", 3, "boom", "x")


def test_a_journal_that_cannot_be_written_stops_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    journal = Journal(blocker / "j")  # its directory cannot be created
    journal.append(_done("a"))
    journal.append(_done("b"))
    assert journal.broken
    (warning,) = [r.message for r in caplog.records]  # said once
    assert warning.startswith(f"the journal {blocker / 'j'} cannot be written ([Errno 20] Not a directory")
    assert warning.endswith("finished rows are kept in batches only")


def test_embedding_records_round_trip(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    vectors = pa.array([[0.25, -1.5, 3.0], [7.0, 8.0]], type=pa.list_(pa.float64()))
    journal.append(_done("v", embedding=vectors.slice(1, 1)))
    journal.append(_done("n", embedding=pa.array([[1.0, None]], type=pa.list_(pa.float32()))))
    (segment,) = journal.directory.iterdir()
    got = read_segment(segment)
    assert [o.embedding.to_pylist() for o in got if o.embedding is not None] == [[[7.0, 8.0]], [[1.0, None]]]


def test_a_live_segment_of_this_process_is_not_replayed(tmp_path: Path) -> None:
    cache = tmp_path / "c.duckdb"
    with Store.open(cache) as store:
        store.register(_jobs(["a"]))
        journal = Journal(journal_dir(cache))
        journal.append(_done("a"))
        with Store.open(cache) as second:  # a second store on the file while the first run writes
            assert second.counts() == {"pending": 1}
        assert len(list(journal.directory.iterdir())) == 1
        journal.close()
    with Store.open(cache) as store:
        assert store.counts() == {"done": 1}


def test_fsync_run_keeps_every_answer(tmp_path: Path) -> None:
    """``fsync=True`` (the journal flushed to disk off the event loop): same answers, nothing left over."""
    cache = tmp_path / "c.duckdb"
    frame = pl.DataFrame({"prompt": prompts(200)})
    with sim.serve() as server:
        out = frame.llm.map("prompt", MODEL, **map_options(server, cache=cache, fsync=True, flush_rows=50))
    assert out["result"].to_list() == [sim.expected_text(MODEL, p) for p in prompts(200)]
    assert not journal_dir(cache).exists()
    assert store_rows(cache)["status"].to_list() == ["done"] * 200


# -- SIGKILL at random points ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference() -> pl.DataFrame:
    frame = pl.DataFrame({"prompt": prompts(N)})
    with sim.serve() as server:
        return frame.llm.map("prompt", MODEL, **map_options(server, concurrency=32))


def _kill_trial(trial: int, tmp_path: Path, reference: pl.DataFrame) -> None:
    rng = random.Random(1000 + trial)
    kill_after = rng.randint(0, N - 4 * CONCURRENCY)
    cache = tmp_path / f"kill-{trial}.duckdb"
    with sim.serve(latency=LATENCY) as server:
        proc = spawn(
            "map", server, str(cache), str(N), "--concurrency", str(CONCURRENCY), "--flush-interval", "60"
        )
        with proc:  # SIGKILL the moment the simulator has answered `kill_after` requests
            try:
                expect_line(proc, "started")
                wait_for(
                    lambda: server.stats(per_prompt=False)["ok"] >= kill_after, what="answers", timeout=60
                )
                still_running = proc.poll() is None
            finally:
                proc.send_signal(signal.SIGKILL)
        assert still_running, "the child finished before the kill"
        before = server.stats()
        answered = set(before["per_prompt"])

        with Store.open(cache):  # replays the journal
            pass
        assert list(iter_segments(cache)) == []
        rows = store_rows(cache)
        assert rows.height == N and rows["key"].n_unique() == N
        assert set(rows["status"]) <= {"pending", "done"}
        done = rows.filter(pl.col("status") == "done")
        assert done["result"].to_list() == [sim.expected_text(MODEL, p) for p in done["prompt"]]
        assert set(done["attempts"]) <= {1}
        done_prompts = set(done["prompt"])
        assert done_prompts <= answered
        lost = answered - done_prompts
        assert len(lost) <= CONCURRENCY, f"{len(lost)} answered prompts were lost"

        out, requested = rerun(server, cache, N)
        assert set(requested) == set(prompts(N)) - done_prompts
        assert set(requested.values()) <= {1}
        assert before["requests"] + sum(requested.values()) <= N + CONCURRENCY
    assert out.equals(reference)
    assert not journal_dir(cache).exists()  # a finished run leaves nothing beside the cache
    rows = store_rows(cache)
    assert set(rows["status"]) == {"done"} and rows.height == N
    print(f"trial {trial}: killed after {kill_after} answers; {len(answered)} answered, {len(lost)} lost")


@pytest.mark.parametrize(
    "trial", [*range(3), *(pytest.param(trial, marks=pytest.mark.slow) for trial in range(3, 25))]
)
def test_sigkill_loses_no_answer(trial: int, tmp_path: Path, reference: pl.DataFrame) -> None:
    _kill_trial(trial, tmp_path, reference)


# -- two processes, one cache ------------------------------------------------------------------------------


def _stderr_line(proc: subprocess.Popen[str], needle: str) -> str:
    """Read the child's stderr until a line containing ``needle``; fail with what it wrote if it ends."""
    assert proc.stderr is not None
    seen: list[str] = []
    while True:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(
                f"child exited ({proc.wait(timeout=60)}) before {needle!r}:\n{''.join(seen)}"
            )
        seen.append(line)
        if needle in line:
            return line


def test_second_process_waits_its_turn_and_pays_nothing_twice(tmp_path: Path) -> None:
    """Two processes map overlapping prompts into one cache: the second waits (saying so, naming the
    first) while the first runs, then sends only what the first did not answer. Both finish, each prompt
    is requested once, every row is in the cache."""
    n = 300
    cache = tmp_path / "shared.duckdb"
    with sim.serve(latency=0.01) as server:
        first = spawn("map", server, str(cache), str(n), "--concurrency", "4")
        second: subprocess.Popen[str] | None = None
        try:
            expect_line(first, "started")
            wait_for(lambda: server.stats(per_prompt=False)["ok"] >= 20, what="the first run under way")
            server.configure(latency=2.0)  # the first run holds the cache until the second is seen waiting
            second = spawn("map", server, str(cache), str(2 * n), "--concurrency", "4")
            line = _stderr_line(second, "waiting for it to finish")
            assert str(cache) in line and f"PID {first.pid}" in line
            server.configure(latency=0.01)
            out_first, err_first = first.communicate(timeout=120)
            out_second, err_second = second.communicate(timeout=120)
        finally:
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.communicate(timeout=60)
        assert first.returncode == 0, err_first
        assert second.returncode == 0, err_second
        assert f"finished {n}" in out_first and f"finished {2 * n}" in out_second
        per_prompt = server.stats()["per_prompt"]
    assert set(per_prompt) == set(prompts(2 * n))
    assert set(per_prompt.values()) == {1}  # nothing paid twice
    rows = store_rows(cache)
    assert rows.height == 2 * n and set(rows["status"]) == {"done"}
    assert rows["result"].to_list() == [sim.expected_text(MODEL, p) for p in rows["prompt"]]


def test_cache_wait_zero_fails_at_once(tmp_path: Path) -> None:
    cache = tmp_path / "held.duckdb"
    Store.open(cache).close()
    holder = spawn("hold", str(cache))
    try:
        expect_line(holder, "ready")
        with sim.serve() as server, pytest.raises(StoreError, match=f"PID {holder.pid}") as info:
            pl.DataFrame({"p": ["a"]}).llm.map("p", MODEL, **map_options(server, cache=cache, cache_wait=0))
        assert "waited" not in str(info.value)
        assert server.stats()["requests"] == 0
        with sim.serve() as server, pytest.raises(StoreError, match=r"waited cache_wait=0\.3 s"):
            pl.DataFrame({"p": ["a"]}).llm.map("p", MODEL, **map_options(server, cache=cache, cache_wait=0.3))
    finally:
        holder.communicate(input="", timeout=60)
