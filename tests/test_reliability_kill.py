"""Hard kills: SIGKILL a mapping process at random points, then rerun in-process.

A child process maps ``N`` prompts into a DuckDB file through a latency simulator that runs in this
(test) process, so the test sees every request. At a random number of answered requests the test
notes which prompts had been sent (``sent``), waits on the child's log until the engine has stored at
least that many rows and committed one more batch (the events the engine logs), then kills the child
with SIGKILL at a random moment of the next flush window. Then:

* the store opens cleanly (WAL replayed), holds one row per prompt, only ``pending``/``done``;
* every prompt in ``sent`` (answered at least a flush window before the kill) is ``done`` in the file;
* the rerun requests exactly the prompts that are not ``done`` in the file, each once — no finished row
  is paid for twice;
* the rerun's frame equals an uninterrupted run's.

Three trials run in the normal suite; ``-m slow`` runs twenty more.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import polars as pl
import pytest

import polars_llm  # noqa: F401  (registers .llm)
from polars_llm import sim
from polars_llm._store.migrations import CURRENT_VERSION
from polars_llm._store.store import Store
from reliability_utils import (
    MODEL,
    expect_line,
    map_options,
    prompts,
    spawn,
    store_rows,
    stored_lines,
    wait_for,
)

N = 600
CONCURRENCY = 4
LATENCY = 0.03  # → about 130 answers/s at concurrency 4: the child is mid-run for several seconds
FLUSH = 0.2  # the child's flush window (flush_interval)


def _reference() -> pl.DataFrame:
    """An uninterrupted run (zero-latency simulator, no cache)."""
    frame = pl.DataFrame({"prompt": prompts(N)})
    with sim.serve() as server:
        return frame.llm.map("prompt", MODEL, **map_options(server, concurrency=32))


@pytest.fixture(scope="module")
def reference() -> pl.DataFrame:
    out = _reference()
    assert out["result"].to_list() == [sim.expected_text(MODEL, p) for p in prompts(N)]
    return out


def _kill_trial(trial: int, tmp_path: Path, reference: pl.DataFrame) -> None:
    rng = random.Random(trial)
    kill_after = rng.randint(5, 150)  # answered requests before the snapshot
    extra = rng.uniform(0.0, FLUSH)  # a random moment inside the next flush window
    cache = tmp_path / f"kill-{trial}.duckdb"
    with sim.serve(latency=LATENCY) as server:
        proc = spawn(
            "map",
            server,
            str(cache),
            str(N),
            "--concurrency",
            str(CONCURRENCY),
            "--flush-interval",
            str(FLUSH),
            "--log-stored",
        )
        try:
            expect_line(proc, "started")
            wait_for(
                lambda: server.stats(per_prompt=False)["ok"] >= kill_after,
                what=f"{kill_after} answers",
                timeout=60,
            )
            sent = set(server.stats()["per_prompt"])  # all answered by now + LATENCY
            stored_lines(proc, lambda total: total >= len(sent))
            stored_lines(proc, lambda total: total > 0)  # then one more commit
            time.sleep(extra)  # the kill moment inside the next flush window (not a synchronisation)
            still_running = proc.poll() is None
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=60)
        assert still_running, "the child finished before the kill; raise N"
        assert proc.returncode == -signal.SIGKILL
        before = server.stats()

        # the store opens cleanly after the kill, at the current schema version
        with Store.open(cache) as store:
            assert store.version == CURRENT_VERSION
        rows = store_rows(cache)
        assert rows.height == N and rows["key"].n_unique() == N and rows["prompt"].n_unique() == N
        assert set(rows["status"]) <= {"pending", "done"}
        done = rows.filter(pl.col("status") == "done")
        assert done["result"].to_list() == [sim.expected_text(MODEL, p) for p in done["prompt"]]
        done_prompts = set(done["prompt"])
        late = sent - done_prompts
        assert not late, f"{len(late)} prompts answered over a flush window before the kill were lost"
        # nothing is in the store as done that the simulator never answered
        assert done_prompts <= set(before["per_prompt"])
        assert done.height <= before["ok"]

        # rerun in this process: only what is not done is requested, each once
        server.reset()
        frame = pl.DataFrame({"prompt": prompts(N)})
        out = frame.llm.map("prompt", MODEL, **map_options(server, cache=cache, concurrency=32))
        rerun = server.stats()["per_prompt"]
        assert set(rerun) == set(prompts(N)) - done_prompts
        assert set(rerun.values()) <= {1}
        assert sum(rerun.values()) <= N - len(sent)
        # paid twice: what was answered but not yet committed — in flight, or within the last flush window
        wasted = before["requests"] + len(rerun) - N
        assert wasted <= CONCURRENCY + 2 * round(CONCURRENCY / LATENCY * FLUSH)
    assert out.equals(reference)
    rows = store_rows(cache)
    assert set(rows["status"]) == {"done"} and rows.height == N
    print(
        f"trial {trial}: snapshot after {kill_after} answers, {len(sent)} sent, {done.height} done at kill, "
        f"{before['requests']} requests before the kill, {len(rerun)} on rerun ({wasted} paid twice)"
    )


@pytest.mark.parametrize("trial", range(3))
def test_sigkill_then_rerun(trial: int, tmp_path: Path, reference: pl.DataFrame) -> None:
    _kill_trial(trial, tmp_path, reference)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(3, 23))
def test_sigkill_then_rerun_many(trial: int, tmp_path: Path, reference: pl.DataFrame) -> None:
    _kill_trial(trial, tmp_path, reference)
