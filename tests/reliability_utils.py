"""Helpers shared by the reliability tests, and a child-process runner.

As a script (run by the tests with the project's interpreter)::

    python tests/reliability_utils.py map BASE_URL CACHE N [--concurrency C] [--flush-interval S]
        [--api-key KEY] [--progress] [--log-stored]
        maps the prompts ``prompts(N)`` with ``DataFrame.llm.map`` into CACHE, printing ``started`` first
        and ``finished <done>`` at the end (the tests kill it with SIGKILL somewhere in between);
    python tests/reliability_utils.py hold CACHE
        opens the store at CACHE, prints ``ready`` and holds the file lock until stdin closes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

HERE = Path(__file__).resolve()
SRC = str(HERE.parents[1] / "src")
MODEL = "sim/echo"
API_KEY = "sk-test-reliability"


def prompts(n: int, prefix: str = "prompt") -> list[str]:
    """``n`` distinct prompts, ``"prompt 0" … "prompt n-1"``."""
    return [f"{prefix} {i}" for i in range(n)]


def map_options(base_url: str, **overrides: Any) -> dict[str, Any]:
    """Keyword options of ``.llm.map`` for the simulator: no progress bar, no cache unless given."""
    options: dict[str, Any] = {"base_url": base_url, "api_key": API_KEY, "cache": None, "progress": False}
    options.update(overrides)
    return options


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Run this file as a child process (stdin/stdout/stderr piped, text mode)."""
    child_env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, str(HERE), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env,
    )


def expect_line(proc: subprocess.Popen[str], word: str) -> str:
    """Read the child's stdout until a line starting with ``word``; fail with its stderr if it dies."""
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout=60)
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"child exited ({proc.returncode}) before {word!r}:\n{err}")
        if line.startswith(word):
            return line.strip()


def wait_for(condition: Callable[[], bool], *, timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``condition`` (e.g. a simulator counter) until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.002)


def rerun(server: Any, cache: Path, n: int) -> tuple[pl.DataFrame, dict[str, int]]:
    """Map ``prompts(n)`` again into ``cache`` in this process: the frame and the requests per prompt."""
    import polars_llm  # noqa: F401  (registers .llm)

    server.reset()
    frame = pl.DataFrame({"prompt": prompts(n)})
    out = frame.llm.map("prompt", MODEL, **map_options(server, cache=cache, concurrency=32))
    return out, server.stats()["per_prompt"]


def store_rows(path: Path) -> pl.DataFrame:
    """Every row of the cache's ``requests`` table (read-only; the file must not be in use)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.sql("SELECT * FROM requests ORDER BY prompt").pl()
    finally:
        con.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dir_digests(directory: Path) -> dict[str, str]:
    return {p.name: digest(p) for p in sorted(directory.iterdir()) if p.is_file()}


def files_containing(secret: bytes, paths: Iterable[Path]) -> list[str]:
    """The files among ``paths`` whose bytes contain ``secret`` (also UTF-16, in case of wide strings)."""
    needles = (secret, secret.decode().encode("utf-16-le"))
    return [str(p) for p in paths if p.is_file() and any(n in p.read_bytes() for n in needles)]


# ------------------------------------------------------------------------------------- child process


def stored_lines(proc: subprocess.Popen[str], until: Callable[[int], bool]) -> int:
    """Read the child's ``stored N finished rows`` log lines until ``until(total stored)``; the total."""
    assert proc.stdout is not None
    total = 0
    while not until(total):
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"child exited ({proc.poll()}) while {total} rows were stored")
        if line.startswith("stored "):
            total += int(line.split()[1])
    return total


def interrupt_child(
    script: str, server: Any, *, after_ok: int, preexec_fn: Callable[[], Any] | None = None
) -> tuple[str, str]:
    """Run ``python -c script BASE_URL`` (it prints ``started`` first), wait until the simulator has
    answered ``after_ok`` requests, hold every later answer (30 s latency: a lost interrupt shows as a
    slow finish), send one SIGINT and return the child's (stdout, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(server)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        preexec_fn=preexec_fn,
    )
    with proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
            wait_for(
                lambda: server.stats(per_prompt=False)["ok"] >= after_ok or proc.poll() is not None,
                timeout=120,
                what=f"{after_ok} answers",
            )
            server.configure(latency=30.0)
            proc.send_signal(signal.SIGINT)
            return proc.communicate(timeout=120)
        except BaseException:
            proc.kill()
            raise


def _child_map(args: argparse.Namespace) -> int:
    import logging

    import polars_llm  # noqa: F401  (registers .llm)

    if args.log_stored:  # the engine logs each committed batch: the tests synchronise on these lines
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger = logging.getLogger("polars_llm")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)

    frame = pl.DataFrame({"prompt": prompts(args.n)})
    print("started", flush=True)
    out = frame.llm.map(
        "prompt",
        MODEL,
        **map_options(
            args.base_url,
            api_key=args.api_key,
            cache=args.cache,
            concurrency=args.concurrency,
            flush_interval=args.flush_interval,
            progress=args.progress,
        ),
    )
    print(f"finished {(out['status'] == 'done').sum()}", flush=True)
    return 0


def _child_hold(args: argparse.Namespace) -> int:
    from polars_llm._store.store import Store

    store = Store.open(Path(args.cache))
    print("ready", flush=True)
    sys.stdin.read()
    store.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reliability_utils")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("map")
    m.add_argument("base_url")
    m.add_argument("cache")
    m.add_argument("n", type=int)
    m.add_argument("--concurrency", type=int, default=4)
    m.add_argument("--flush-interval", type=float, default=1.0)
    m.add_argument("--api-key", default=API_KEY)
    m.add_argument("--progress", action="store_true")
    m.add_argument("--log-stored", action="store_true", help="print 'stored N finished rows' per commit")
    h = sub.add_parser("hold")
    h.add_argument("cache")
    args = parser.parse_args(argv)
    return _child_map(args) if args.command == "map" else _child_hold(args)


if __name__ == "__main__":
    sys.exit(main())
