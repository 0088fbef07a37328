"""Notebook behaviour proven in real Jupyter kernels (ipykernel, driven over ZMQ by jupyter_client).

The simulator runs in this test process, so its counters are read directly; the kernel talks HTTP to it
and keeps its cache in a DuckDB file under ``tmp_path``. Interrupts are synchronised on the simulator's
request count, never on a sleep. The one timing assertion is the behaviour under test (issue 3): an
interrupted cell gives the kernel back within about a second.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pytest

import polars_llm
from kernel_utils import CellResult, Kernel, start_kernel
from polars_llm import sim

pytestmark = pytest.mark.timeout(180)

# Interrupt to idle, measured from just before SIGINT to the kernel's "idle" status. The issue asks for
# 1 s; measured here 0.2-0.8 s (most of it is IPython rendering the traceback). The margin is for a
# loaded 2-core CI box.
IDLE_WITHIN = 1.5
CONCURRENCY = 8
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# What a traceback must not show after an interrupt: the engine's internals.
INTERNALS = ("_engine.py", "anyio", "ExceptionGroup", "concurrent/futures", "threading.py", "asyncio/")

# Run once per kernel. `new_threads()` lists Python threads started since (none may survive a run);
# `live_bars()` counts tqdm bars not closed.
KERNEL_SETUP = """
import json, threading, time
import polars as pl
import polars_llm
from tqdm.std import tqdm as _tqdm

_BASELINE = {t.ident for t in threading.enumerate()}

def new_threads(wait=2.0):
    # threads told to stop may need a moment to return; wait for them, not longer than `wait`
    deadline = time.monotonic() + wait
    while True:
        extra = sorted(t.name for t in threading.enumerate() if t.ident not in _BASELINE)
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.01)

def live_bars():
    return len(_tqdm._instances)
"""


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``predicate`` (cheap, in-process state) until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def requests_reach(server: sim.SimServer, n: int) -> Callable[[], bool]:
    return lambda: server.stats(per_prompt=False)["requests"] >= n


def store_counts(path: Path) -> dict[str, int]:
    """Rows per status, read straight from the DuckDB file (only while no kernel holds it)."""
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute("SELECT status, count(*) FROM requests GROUP BY status").fetchall()
    return {str(status): int(n) for status, n in rows}


def plain(text: str) -> str:
    return ANSI.sub("", text)


def assert_clean_interrupt(result: CellResult, expected: str = "KeyboardInterrupt") -> None:
    assert result.status == "error"
    assert result.ename == expected, result.traceback
    shown = plain(result.traceback)
    for marker in INTERNALS:
        assert marker not in shown, f"the traceback shows {marker!r}:\n{shown}"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    with start_kernel(cwd=tmp_path_factory.mktemp("kernel-cwd")) as k:
        k.run(KERNEL_SETUP)
        yield k


@pytest.fixture
def slow_server() -> Iterator[sim.SimServer]:
    """8 in flight × 50 ms: ~160 requests/s, so 3,000 prompts take ~19 s unless interrupted."""
    with sim.serve(latency=0.05) as server:
        yield server


def prepare(kernel: Kernel, server: str, cache: Path, n: int, prefix: str = "doc") -> None:
    kernel.run(
        f"URL = {str(server)!r}\nCACHE = {str(cache)!r}\n"
        f"df = pl.DataFrame({{'prompt': [f'{prefix} {{i}}' for i in range({n})]}})"
    )


MAP_CELL = (
    f'out = df.llm.map("prompt", "m", base_url=URL, api_key="sk-k", cache=CACHE, concurrency={CONCURRENCY})'
)
AMAP_CELL = MAP_CELL.replace("df.llm.map(", "await df.llm.amap(")


def interrupt_after(
    kernel: Kernel, server: sim.SimServer, cell: str, requests: int
) -> tuple[CellResult, float]:
    """Run ``cell``, interrupt it once the simulator saw ``requests``; return its result and idle time."""
    msg_id = kernel.submit(cell)
    wait_until(requests_reach(server, requests), f"{requests} requests")
    t0 = kernel.interrupt()
    result = kernel.collect(msg_id, timeout=30)
    return result, result.idle_at - t0


def check_resume(kernel: Kernel, server: sim.SimServer, cache: Path, cell: str, n: int) -> None:
    """After an interrupt: finished rows are stored; the same cell completes, resending ≤ concurrency."""
    at_interrupt = server.stats(per_prompt=False)
    answered = at_interrupt["ok"]
    counts = store_counts(cache)
    assert counts["done"] + counts.get("pending", 0) == n
    # Everything answered before the interrupt is in the store, except at most the requests still in
    # flight when it came (answered by the server, cut off at the client).
    assert answered - CONCURRENCY <= counts["done"] <= answered, (counts, at_interrupt)
    server.configure(latency=0.0)  # the rest at full speed: the re-run only has to complete
    kernel.run(cell, timeout=120)
    assert kernel.value("out['status'].value_counts().sort('status').rows()") == [["done", n]]
    stats = server.stats()
    # unique prompts + what was in flight at the interrupt; the cancel path flushed the rest, so not even
    # one flush window (flush_interval) of answers is paid twice.
    assert stats["requests"] <= n + CONCURRENCY, stats["requests"]
    assert max(stats["per_prompt"].values()) <= 2
    assert store_counts(cache) == {"done": n}


def test_interrupt_is_prompt_clean_and_resumable(
    kernel: Kernel, slow_server: sim.SimServer, tmp_path: Path
) -> None:
    n, cache = 3000, tmp_path / "cache.duckdb"
    prepare(kernel, slow_server, cache, n)
    # ~2 s into a run that would take ~19 s
    result, idle = interrupt_after(kernel, slow_server, MAP_CELL, requests=320)
    print(f"sync map: interrupt -> idle {idle:.3f} s")
    assert_clean_interrupt(result)
    assert idle <= IDLE_WITHIN, f"kernel idle {idle:.2f} s after the interrupt"
    # the bar was closed and marked as stopped, not left running
    assert any(s.get("bar_style") == "danger" for s in result.widget_states())
    for field in ("done=", "failed=0", "retrying=", "rpm=", "tok=", "$"):
        assert field in result.widget_text()
    assert kernel.value("live_bars()") == 0
    assert kernel.value("new_threads()") == []
    check_resume(kernel, slow_server, cache, MAP_CELL, n)
    assert kernel.value("new_threads()") == []


def test_await_interrupt_is_prompt_and_resumable(
    kernel: Kernel, slow_server: sim.SimServer, tmp_path: Path
) -> None:
    """Top-level ``await`` in a cell: same story. ipykernel turns SIGINT during an ``await`` cell into
    cancelling the cell's task, so the cell shows ``CancelledError`` (ipykernel's documented behaviour);
    the engine flushes exactly as on KeyboardInterrupt."""
    n, cache = 3000, tmp_path / "cache.duckdb"
    prepare(kernel, slow_server, cache, n, prefix="async doc")
    result, idle = interrupt_after(kernel, slow_server, AMAP_CELL, requests=320)
    print(f"await amap: interrupt -> idle {idle:.3f} s")
    assert_clean_interrupt(result, expected="CancelledError")
    assert idle <= IDLE_WITHIN, f"kernel idle {idle:.2f} s after the interrupt"
    assert kernel.value("live_bars()") == 0
    assert kernel.value("new_threads()") == []
    check_resume(kernel, slow_server, cache, AMAP_CELL, n)
    assert kernel.value("new_threads()") == []


def test_sync_map_in_an_await_cell_is_interruptible(
    kernel: Kernel, slow_server: sim.SimServer, tmp_path: Path
) -> None:
    """A cell that uses ``await`` runs as a coroutine, and ipykernel's SIGINT handler then only schedules
    a cancellation on the loop, which a blocking ``df.llm.map`` in that cell holds: without care the
    interrupt would wait for the whole run. It stops at once instead, like the ``await`` case."""
    n, cache = 2000, tmp_path / "cache.duckdb"
    prepare(kernel, slow_server, cache, n, prefix="mixed")
    cell = "import asyncio\nawait asyncio.sleep(0)\n" + MAP_CELL
    result, idle = interrupt_after(kernel, slow_server, cell, requests=160)
    print(f"sync map in an await cell: interrupt -> idle {idle:.3f} s")
    assert_clean_interrupt(result, expected="CancelledError")
    assert idle <= IDLE_WITHIN, f"kernel idle {idle:.2f} s after the interrupt"
    assert slow_server.stats(per_prompt=False)["requests"] < n // 2
    assert kernel.value("live_bars()") == 0
    assert kernel.value("new_threads()") == []
    check_resume(kernel, slow_server, cache, cell, n)


def test_await_runs_on_the_kernels_loop(kernel: Kernel, tmp_path: Path) -> None:
    """``await df.llm.amap`` and ``await polars_llm.llm_map_async`` work as top-level awaits (no
    ``asyncio.run() cannot be called from a running event loop``) and run on the kernel's own loop."""
    with sim.serve() as server:
        prepare(kernel, server, tmp_path / "cache.duckdb", 50)
        kernel.run(
            "import asyncio\n"
            "loops = set()\n"
            "async def worker(prompt):\n"
            "    loops.add(id(asyncio.get_running_loop()))\n"
            "    return prompt.upper()\n"
            "framed = await df.llm.amap('prompt', 'm', worker=worker, cache=CACHE)\n"
            "series = await polars_llm.llm_map_async(df['prompt'], model='m', base_url=URL, api_key='k',"
            " cache=CACHE)\n"
            "same_loop = loops == {id(asyncio.get_running_loop())}"
        )
        assert kernel.value("same_loop") is True
        assert kernel.value("framed['result'].to_list()[:2]") == ["DOC 0", "DOC 1"]
        assert kernel.value("series.struct.field('status').unique().to_list()") == ["done"]
        assert server.stats()["requests"] == 50
        assert kernel.value("new_threads()") == []


def test_await_prompt_map(kernel: Kernel, tmp_path: Path) -> None:
    """The seed-style ``await prompt_map(...)`` works as a top-level await in a cell."""
    if not hasattr(polars_llm, "prompt_map"):
        pytest.skip("polars_llm.prompt_map is not exported yet")
    with sim.serve() as server:
        prepare(kernel, server, tmp_path / "seed.duckdb", 30)
        kernel.run(
            "rows = await polars_llm.prompt_map(df['prompt'].to_list(), model_name='m', base_url=URL,"
            " openrouter_api_key='k', cache_db_url=CACHE, teardown_results=True, verbose=False)"
        )
        assert kernel.value("sorted({r['status'] for r in rows})") == ["done"]
        assert kernel.value("len(rows)") == 30
        assert server.stats()["requests"] == 30
        assert kernel.value("new_threads()") == []


def test_error_mid_run_leaves_the_kernel_usable(kernel: Kernel, tmp_path: Path) -> None:
    """The provider starts answering 401 mid-run: the cell raises AuthenticationError, the finished rows
    are kept, and once the key works again the same cell completes in the same kernel without any
    ``database is locked`` / lock error."""
    n, cache = 2000, tmp_path / "cache.duckdb"
    with sim.serve(latency=0.02) as server:
        prepare(kernel, server, cache, n)
        msg_id = kernel.submit(MAP_CELL)
        wait_until(requests_reach(server, 200), "200 requests")
        server.configure(fail_mode=401)
        result = kernel.collect(msg_id, timeout=60)
        assert result.ename == "AuthenticationError", result.traceback
        assert "401" in plain(result.traceback)
        assert kernel.value("live_bars()") == 0
        assert kernel.value("new_threads()") == []
        done_before = store_counts(cache)["done"]
        assert done_before >= 200 - CONCURRENCY
        server.configure(fail_mode=None, latency=0.0)
        again = kernel.run(MAP_CELL, timeout=120)
        assert "lock" not in (again.stdout + again.stderr).lower()
        assert kernel.value("out['status'].value_counts().rows()") == [["done", n]]
        ok = server.stats(per_prompt=False)["ok"]
        assert ok <= n + CONCURRENCY  # the rows done before the 401 were not paid for again
        assert store_counts(cache) == {"done": n}


def test_error_in_an_await_cell_is_reported(kernel: Kernel, tmp_path: Path) -> None:
    """A fatal error under top-level ``await`` arrives as itself (not an ExceptionGroup from the engine's
    task groups, which IPython 9 cannot render and ipykernel then answers with no execute_reply)."""
    with sim.serve(fail_mode=401) as server:
        prepare(kernel, server, tmp_path / "cache.duckdb", 20)
        result = kernel.run(AMAP_CELL, check=False)
        assert result.status == "error"
        assert result.ename == "AuthenticationError", result.stderr or result.traceback
        assert kernel.value("live_bars()") == 0
        server.configure(fail_mode=None)
        kernel.run(AMAP_CELL)
        assert kernel.value("out['status'].value_counts().rows()") == [["done", 20]]


def test_two_kernels_on_one_cache(kernel: Kernel, tmp_path: Path) -> None:
    """A second kernel on a cache another kernel is writing gets (with ``cache_wait=0``) a clear StoreError
    naming the holder, at once; the file is never corrupted; once the first run finishes the second
    kernel's run works."""
    cache = tmp_path / "shared.duckdb"
    with sim.serve(latency=0.2) as server, start_kernel(cwd=tmp_path) as second:
        second.run(KERNEL_SETUP)
        prepare(kernel, server, cache, 1000, prefix="first")
        prepare(second, server, cache, 300, prefix="second")
        first_run = kernel.submit(MAP_CELL)  # ~50 s at this latency: it holds the file meanwhile
        wait_until(requests_reach(server, CONCURRENCY), "the first kernel's run to be under way")
        # cache_wait=0: the error at once (by default the second run waits its turn; test_journal.py)
        blocked = second.run(
            MAP_CELL.replace("cache=CACHE,", "cache=CACHE, cache_wait=0,"), check=False, timeout=60
        )
        assert blocked.ename == "StoreError", blocked.traceback
        message = plain(blocked.error["evalue"]) if blocked.error else ""
        assert "locked" in message and f"PID {kernel.pid}" in message, message
        assert second.value("new_threads()") == []
        server.configure(latency=0.0)  # let the first run finish
        first = kernel.collect(first_run, timeout=120)
        assert first.error is None, first.traceback
        second.run(MAP_CELL, timeout=120)  # the lock is gone with the first run
        assert second.value("out['status'].value_counts().rows()") == [["done", 300]]
    assert store_counts(cache) == {"done": 1300}


def test_progress_falls_back_to_text_without_ipywidgets(tmp_path: Path) -> None:
    """Without ipywidgets the bar is text on stderr, with no ``IProgress not found`` warning; the widget
    case is covered by the interrupt test and the notebooks."""
    with sim.serve() as server, start_kernel(cwd=tmp_path) as k:
        k.run("import sys\nsys.modules['ipywidgets'] = None  # as if it were not installed\n" + KERNEL_SETUP)
        prepare(k, server, tmp_path / "cache.duckdb", 40)
        result = k.run(MAP_CELL)
        assert result.comm_msgs == []  # no widget
        assert "IProgress" not in result.stderr + result.stdout
        assert "llm" in result.stderr and "40/40" in result.stderr
        assert "done=40 failed=0 tok=" in result.stderr  # the finished bar: what the run did
        assert "tok=" in result.stderr and "$" in result.stderr
        assert k.value("live_bars()") == 0
        assert k.value("new_threads()") == []
