"""Run an async engine from synchronous code: scripts, Polars UDFs, and Jupyter cells alike.

A Jupyter cell already runs an event loop on the main thread, where ``anyio.run`` fails. So the engine
always runs on its own loop in an anyio blocking portal thread, while the calling thread waits in short
slices. That keeps Ctrl-C / kernel interrupts prompt: a ``KeyboardInterrupt`` cancels the engine, which
flushes finished rows to the store, and is re-raised once the portal thread has stopped (no thread left
behind). No ``nest_asyncio``: nothing is patched process-wide.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from anyio.from_thread import start_blocking_portal

__all__ = ["run_sync"]

P = ParamSpec("P")
T = TypeVar("T")

_POLL = 0.05
# How long an interrupted engine gets to flush and stop before we give up waiting (it normally needs
# well under a second; DuckDB writes already under way are never abandoned halfway).
_CANCEL_GRACE = 10.0


def _unwrap(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def run_sync(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``await fn(*args, **kwargs)`` on a private event loop thread and return its result.

    >>> import anyio
    >>> async def add(a, b):
    ...     await anyio.sleep(0)
    ...     return a + b
    >>> run_sync(add, 1, 2)
    3
    """

    finished = threading.Event()

    async def call() -> T:
        try:
            return await fn(*args, **kwargs)
        finally:
            finished.set()

    with start_blocking_portal(backend="asyncio") as portal:
        future = portal.start_task_soon(call)
        try:
            while True:
                done, _ = concurrent.futures.wait([future], timeout=_POLL)
                if done:
                    break
        except KeyboardInterrupt:
            future.cancel()  # cancels the engine's scope; it flushes, then `finished` is set
            _wait_ignoring_interrupts(finished)
            raise
        try:
            return future.result()
        except BaseException as error:  # unwrap single-error groups from task groups
            unwrapped = _unwrap(error)
            if unwrapped is error:
                raise
            raise unwrapped.with_traceback(unwrapped.__traceback__) from None


def _wait_ignoring_interrupts(finished: threading.Event) -> None:
    deadline = time.monotonic() + _CANCEL_GRACE
    while time.monotonic() < deadline:
        try:
            if finished.wait(_POLL):
                return
        except KeyboardInterrupt:  # a second Ctrl-C while we flush: keep flushing
            continue
