"""Helpers for the batch-mode tests: a call run in a thread while the test drives the simulator, and
waits on the simulator's (or the store's) state — never on a sleep."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from polars_llm import sim


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll cheap in-process state until ``predicate`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def batches_created(server: sim.SimServer) -> int:
    return int(server.stats(per_prompt=False)["batch"]["batches_created"])


def calls(server: sim.SimServer) -> dict[str, int]:
    return dict(server.stats(per_prompt=False)["batch"]["calls"])


def per_prompt(server: sim.SimServer) -> dict[str, int]:
    """How many times each prompt was run in a batch."""
    return dict(server.stats()["batch"]["per_prompt"])


class Background:
    """Run ``fn()`` in a thread; :meth:`result` joins it and returns its value or raises its error."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._value: Any = None
        self._error: BaseException | None = None

        def target() -> None:
            try:
                self._value = fn()
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def result(self, timeout: float = 60.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the call did not return within {timeout} s"
        if self._error is not None:
            raise self._error
        return self._value


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` read straight from the DuckDB file (only while no run holds it)."""
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(sql).fetchall()
