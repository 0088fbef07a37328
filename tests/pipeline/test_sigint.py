"""A Ctrl-C always stops a run, whatever SIGINT was left to before it.

* SIGINT inherited as *ignored* (a process started by a script with ``cmd &``, as a CI job can be):
  Python raises nothing for it, not even for ``_thread.interrupt_main()``, while Polars (whose import
  installs its own OS-level handler over the ignore) aborts its queries. A run still stops — for
  ``_thread.interrupt_main()`` in-process and for a real SIGINT sent to a child process.
* A run leaves the OS-level SIGINT handler as it found it: ``signal.signal`` alone would put Python's
  handler where Polars's was, and streamed runs would stop seeing interrupts.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl
import pytest
from test_map import test_interrupted_run_resumes_without_paying_twice as interrupted_run

import polars_llm  # noqa: F401  (registers .llm)
from polars_llm import sim
from polars_llm._bridge import _os_sigint, _set_os_sigint
from reliability_utils import interrupt_child

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def sigint_ignored() -> Iterator[None]:
    """SIGINT ignored, as a process started in the background by a script inherits it; restored after
    (the OS-level action too, so Polars's handler is back for later tests)."""
    raw = _os_sigint()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _set_os_sigint(raw)


@pytest.mark.usefixtures("sigint_ignored")
def test_interrupt_main_stops_a_run_when_sigint_is_ignored(tmp_path: Path) -> None:
    """test_map's interrupt test (``_thread.interrupt_main()`` half-way, then a rerun that pays nothing
    twice), with SIGINT ignored as a background job inherits it."""
    interrupted_run(tmp_path)


def test_real_sigint_stops_a_background_child(tmp_path: Path) -> None:
    """A child started with SIGINT ignored gets a real SIGINT mid-run: the run stops with
    KeyboardInterrupt, keeps what it was answered, and a rerun pays nothing twice."""
    cache = tmp_path / "c.duckdb"
    n = 400
    script = textwrap.dedent(
        f"""
        import sys
        import polars as pl
        import polars_llm
        df = pl.DataFrame({{"p": [f"row {{i}}" for i in range({n})]}})
        print("started", flush=True)
        try:
            df.llm.map("p", "m", base_url=sys.argv[1], api_key="k", cache={str(cache)!r}, progress=False,
                       concurrency=4)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        else:
            print("finished", flush=True)
        """
    )
    with sim.serve(latency=0.02) as server:
        out, err = interrupt_child(
            script, server, after_ok=40, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)
        )
        assert out.strip() == "interrupted", err
        server.configure(latency=0.0)
        first = server.stats()["per_prompt"]
        with duckdb.connect(str(cache), read_only=True) as con:
            (kept,) = con.execute("select count(*) from requests where status = 'done'").fetchone()
        assert kept >= 40
        server.reset()
        df = pl.DataFrame({"p": [f"row {i}" for i in range(n)]})
        rerun = df.llm.map("p", "m", base_url=server, api_key="k", cache=cache, progress=False)
        again = server.stats()["per_prompt"]
    assert rerun["status"].to_list() == ["done"] * n
    assert sum(again.values()) == n - kept and set(again.values()) == {1}
    assert len(first) < n


def test_a_run_leaves_the_os_sigint_handler_as_it_found_it() -> None:
    """In a fresh process Polars's OS-level handler is in place; a run called from a coroutine (where the
    bridge swaps Python's handlers for the wait) and one with SIGINT ignored leave it there."""
    script = textwrap.dedent(
        """
        import asyncio, signal, sys
        import polars as pl
        import polars_llm
        from polars_llm._bridge import _os_sigint, _set_os_sigint
        handler = lambda: _os_sigint().raw[:8]  # struct sigaction starts with the handler's address
        polars_handler = handler()
        polars_action = _os_sigint()
        df = pl.DataFrame({"p": ["a", "b"]})
        options = dict(base_url=sys.argv[1], api_key="k", cache=None, progress=False)

        async def main():
            _set_os_sigint(polars_action)  # asyncio.run replaced it with Python's own
            df.llm.map("p", "m", **options)  # a blocking call from a coroutine
            return handler() == polars_handler

        print("coroutine", asyncio.run(main()))
        _set_os_sigint(polars_action)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _set_os_sigint(polars_action)  # as after `import polars` in a process started with SIGINT ignored
        df.llm.map("p", "m", **options)
        ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        print("ignored", handler() == polars_handler, ignored)
        """
    )
    with sim.serve() as server:
        done = subprocess.run(
            [sys.executable, "-c", script, str(server)],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["coroutine True", "ignored True True"]
