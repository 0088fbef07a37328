"""Batch mode in real Jupyter kernels: the two-cell flow (submit today, collect tomorrow in a fresh kernel)
and an interrupt while waiting, which leaves the batch running and recorded. The simulator runs in this
process and holds each batch until the test ends it; the tests wait on its state, never on a sleep."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_kernel import INTERNALS, KERNEL_SETUP, plain

from batch_utils import batches_created, per_prompt, query, wait_until
from kernel_utils import Kernel, start_kernel
from polars_llm import sim

pytestmark = pytest.mark.timeout(240)

N = 40


def setup(kernel: Kernel, server: str, cache: Path) -> None:
    kernel.run(KERNEL_SETUP)
    kernel.run(
        f"URL = {str(server)!r}\nCACHE = {str(cache)!r}\n"
        f"df = pl.DataFrame({{'prompt': [f'ticket {{i}}' for i in range({N})]}})"
    )


# what the README shows: the same cell, run today and again tomorrow
CELL = "out = df.llm.map('prompt', 'm', base_url=URL, api_key='sk-k', cache=CACHE, mode='batch', wait=False)"


def test_submit_in_one_kernel_collect_in_a_fresh_one(tmp_path: Path) -> None:
    cache = tmp_path / "cache.duckdb"
    with sim.serve(batch_seconds=None) as server:
        with start_kernel(cwd=tmp_path) as today:
            setup(today, server, cache)
            today.run(CELL)
            assert today.value("out['status'].unique().to_list()") == ["submitted"]
            assert today.value("new_threads()") == []
            assert today.value("live_bars()") == 0
        # the kernel is gone; the provider finishes the batch overnight
        assert server.finish_batches() != []
        with start_kernel(cwd=tmp_path) as tomorrow:
            setup(tomorrow, server, cache)
            tomorrow.run(CELL)
            assert tomorrow.value("out['status'].unique().to_list()") == ["done"]
            assert tomorrow.value("out['result'].to_list()") == [
                sim.expected_text("m", f"ticket {i}") for i in range(N)
            ]
            assert tomorrow.value("new_threads()") == []
        assert batches_created(server) == 1 and set(per_prompt(server).values()) == {1}
        assert server.stats(per_prompt=False)["requests"] == 0


def test_interrupting_the_wait_leaves_the_batch_running_and_recorded(tmp_path: Path) -> None:
    """While the cell waits, the cache is free between checks (another process can list the batches);
    an interrupt leaves the batch running and recorded, and the same cell later collects it."""
    cache = tmp_path / "cache.duckdb"
    waiting_cell = CELL.replace("wait=False", "poll_interval=30")
    with sim.serve(batch_seconds=None) as server, start_kernel(cwd=tmp_path) as kernel:
        setup(kernel, server, cache)
        msg_id = kernel.submit(waiting_cell)
        # submitted and checked once: the cell now sleeps 30 s before the next check
        wait_until(lambda: server.stats(per_prompt=False)["batch"]["calls"].get("GET /batches/{id}", 0) >= 1,
                   "the kernel to check the batch")  # fmt: skip
        listing = subprocess.run(
            [sys.executable, "-m", "polars_llm.cli", "batches", "--cache", str(cache)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert listing.returncode == 0, listing.stderr
        assert server.batches()[0]["id"] in listing.stdout and "yes" in listing.stdout
        kernel.interrupt()
        result = kernel.collect(msg_id, timeout=30)
        assert result.ename == "KeyboardInterrupt", result.traceback
        shown = plain(result.traceback)
        for marker in INTERNALS:
            assert marker not in shown, f"the traceback shows {marker!r}:\n{shown}"
        assert "keep running at the provider" in shown and "run the same call again" in shown
        assert kernel.value("live_bars()") == 0
        assert kernel.value("new_threads()") == []
        # recorded and live; nothing lost
        [(batch_id, live, requests)] = query(
            cache, "SELECT batch_id, collected_at IS NULL, requests FROM batches"
        )
        assert live and requests == N and batch_id == server.batches()[0]["id"]
        assert server.batches()[0]["status"] == "in_progress"
        server.finish_batches()
        kernel.run(waiting_cell)  # checks at once: collected
        assert kernel.value("out['status'].unique().to_list()") == ["done"]
    assert batches_created(server) == 1 and set(per_prompt(server).values()) == {1}
