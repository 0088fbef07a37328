"""Run an async engine from synchronous code: scripts, Polars UDFs, and Jupyter cells alike.

A Jupyter cell already runs an event loop on the main thread, where ``anyio.run`` fails. So the engine
always runs on its own loop in an anyio blocking portal thread, while the calling thread waits in short
slices. That keeps Ctrl-C / kernel interrupts prompt: a ``KeyboardInterrupt`` cancels the engine, which
flushes finished rows to the store, and is re-raised once the portal thread and its worker threads have
stopped (no thread left behind). No ``nest_asyncio``: nothing is patched process-wide. When the caller
is itself a coroutine on the main thread (a cell that also uses ``await``), the SIGINT handler of the
running loop would only schedule a cancellation the blocked loop never runs, so Python's default handler
is put in place for the wait and the interrupt surfaces as ``CancelledError`` (see ``_SigintGuard``).

:func:`run_async` is the awaitable counterpart for a caller that has a loop (top-level ``await`` in a
cell): the engine runs on the caller's loop, and errors come out as cleanly as from :func:`run_sync`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import ctypes
import functools
import inspect
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

import anyio
import polars as pl
from anyio.from_thread import start_blocking_portal

from .exceptions import PolarsLLMError, remember

__all__ = [
    "LoopThread",
    "offload",
    "on_polars_pool",
    "polars_aborted",
    "run_async",
    "run_inline",
    "run_sync",
    "surfaced",
]

P = ParamSpec("P")
T = TypeVar("T")

_POLL = 0.05
# How long an interrupted engine gets to flush and stop before we give up waiting (it normally needs
# well under a second; DuckDB writes already under way are never abandoned halfway).
_CANCEL_GRACE = 10.0
# Worker threads of a finished loop exit at once (they were told to stop); this only bounds the join.
_JOIN_WORKERS = 2.0


def _unwrap(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def polars_aborted() -> None:
    """Raise ``KeyboardInterrupt`` if the Polars query this thread works for was interrupted.

    Importing Polars installs its own SIGINT handler at the OS level, even over an inherited "ignore": a
    process started in the background (``cmd &`` in a script) has SIGINT ignored by Python, yet Polars
    catches the signal and aborts its query, raising ``KeyboardInterrupt`` from every Polars call until
    the query ends. A run waiting inside a Polars UDF asks Polars on every slice, so such an interrupt
    stops it as promptly as one Python raised itself.
    """
    pl.select(pl.lit(0))


def on_polars_pool() -> bool:
    """True on one of Polars' compute threads (``polars-N``), where its in-memory engine calls an
    elementwise function with one chunk of a column each: see :func:`run_inline`."""
    if threading.current_thread() is threading.main_thread():
        return False
    return _native_thread_name().startswith("polars-")


@functools.cache
def _pthread() -> Any:
    try:
        libc = ctypes.CDLL(None)
        libc.pthread_self.restype = ctypes.c_void_p
        libc.pthread_getname_np.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    except (OSError, AttributeError):  # no pthreads (Windows): such calls take the ordinary path
        return None
    return libc


def _native_thread_name() -> str:
    """The OS name of the calling thread (Polars names its compute threads ``polars-N``); "" if unknown."""
    libc = _pthread()
    buf = ctypes.create_string_buffer(64)
    if libc is None or libc.pthread_getname_np(libc.pthread_self(), buf, len(buf)) != 0:
        return ""
    return buf.value.decode(errors="replace")


_INLINE: ContextVar[bool] = ContextVar("polars_llm_inline", default=False)


async def offload(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` (blocking: DuckDB, a file, a Polars frame) off the event loop, on a worker thread.

    In a run hosted on a Polars compute thread (:func:`run_inline`) it runs on the loop's own thread:
    Polars work on any other thread would wait for a compute thread, and those may all be waiting for us.
    """
    if _INLINE.get():
        return fn(*args)
    return await anyio.to_thread.run_sync(fn, *args)


def run_inline(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """:func:`run_sync` for a caller on a Polars compute thread: the loop runs on this very thread.

    Polars' in-memory engine calls an elementwise function on its compute threads, one chunk each and
    several at once. A run waiting there on a loop thread would deadlock as soon as every compute thread
    waits and the run needs Polars (a join, a frame written to DuckDB): Polars queues that work for a
    compute thread. Here everything the run does with Polars happens on this thread (:func:`offload`),
    where Polars runs it in place. Polars' abort of an interrupted query is probed as in
    :class:`LoopThread`.

    >>> async def add(a, b):
    ...     return a + b
    >>> run_inline(add, 1, 2)
    3
    """
    __tracebackhide__ = True
    interrupted = False

    async def main() -> T:
        nonlocal interrupted
        _INLINE.set(True)
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                nonlocal interrupted
                while True:
                    await anyio.sleep(_POLL)
                    try:
                        polars_aborted()
                    except KeyboardInterrupt:
                        interrupted = True
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(watch)
            try:
                return await fn(*args, **kwargs)
            finally:
                tg.cancel_scope.cancel()

    error: BaseException | None = None
    try:
        result = anyio.run(main)
    except BaseException as exc:
        error = _unwrap(exc)
    if interrupted:
        raise KeyboardInterrupt from None
    if error is not None:
        raise _detach_groups(error).with_traceback(error.__traceback__)
    return result


def run_sync(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``await fn(*args, **kwargs)`` on a private event loop thread and return its result
    (on a Polars compute thread: :func:`run_inline`).

    >>> import anyio
    >>> async def add(a, b):
    ...     await anyio.sleep(0)
    ...     return a + b
    >>> run_sync(add, 1, 2)
    3
    """
    __tracebackhide__ = True  # IPython and pytest: show the caller's line, not this wait loop
    if on_polars_pool():
        return run_inline(fn, *args, **kwargs)
    with LoopThread(probe=polars_aborted) as loop:
        return loop.call(fn, *args, **kwargs)


class LoopThread:
    """An event loop on its own thread for several :meth:`call` s in a row (a streamed run's chunks).

    The calling thread waits in short slices, so an interrupt is handled as in :func:`run_sync`: the
    running call is cancelled (the engine flushes what finished) and ``KeyboardInterrupt`` is raised once
    it has stopped. ``probe`` (a callable run on every slice) lets a thread that never sees SIGINT — a
    Polars pool thread — notice an interrupt by raising ``KeyboardInterrupt`` itself.

    >>> async def double(x):
    ...     return 2 * x
    >>> with LoopThread() as loop:
    ...     loop.call(double, 1), loop.call(double, 2)
    (2, 4)
    """

    def __init__(self, probe: Callable[[], None] | None = None) -> None:
        self._probe = probe
        self._loops: list[asyncio.AbstractEventLoop] = []
        self._cm: Any = None
        self._portal: Any = None

    def __enter__(self) -> LoopThread:
        self._cm = start_blocking_portal(backend="asyncio")
        self._portal = self._cm.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self._cm.__exit__(*exc_info)
        finally:
            _join_worker_threads(self._loops)

    def background(self, fn: Callable[[], Awaitable[Any]]) -> concurrent.futures.Future[Any]:
        """Start ``fn()`` beside the calls (a progress refresh); ``.cancel()`` the result to stop it."""
        return self._portal.start_task_soon(fn)

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, probe: bool = True, **kwargs: Any) -> T:
        """``await fn(*args, **kwargs)`` on the loop; ``probe=False``: cleanup not to be cut short."""
        __tracebackhide__ = True
        finished = threading.Event()
        loops = self._loops

        async def call() -> T:
            if not loops:
                loops.append(asyncio.get_running_loop())
            try:
                return await fn(*args, **kwargs)
            finally:
                finished.set()

        future = self._portal.start_task_soon(call)
        guard = _SigintGuard()
        try:
            with guard:  # only around the wait, where a KeyboardInterrupt is handled
                while True:
                    done, _ = concurrent.futures.wait([future], timeout=_POLL)
                    if done:
                        break
                    if probe and self._probe is not None:
                        self._probe()
        except KeyboardInterrupt:
            future.cancel()  # cancels the engine's scope; it flushes, then `finished` is set
            _wait_ignoring_interrupts(finished)
        else:
            error: BaseException | None = None
            try:
                return future.result()
            except BaseException as exc:
                error = _unwrap(exc)
            # Raised here, outside any ``except``, so it does not get the task group's ExceptionGroup as
            # its ``__context__`` (see _detach_groups).
            raise _detach_groups(error).with_traceback(error.__traceback__)
        if guard.forwarding:
            # Called from a coroutine (an ``await`` cell): tell the loop's owner about the interrupt and
            # stop this coroutine the way it would have, by cancellation. A KeyboardInterrupt escaping a
            # task would break the kernel's event loop.
            guard.forward()
            raise asyncio.CancelledError("interrupted") from None
        # A fresh KeyboardInterrupt carries no frames of the wait loop (concurrent.futures, threading):
        # the cell shows a short, plain KeyboardInterrupt.
        raise KeyboardInterrupt from None


class _SigintGuard:
    """Make Ctrl-C reach :func:`run_sync` on the main thread, whatever SIGINT was left to.

    * An ``await`` cell in Jupyter (and ``asyncio.run``) replaces the SIGINT handler with one that only
      *schedules* a cancellation on the event loop, which this blocking call is holding: the interrupt
      would wait for the whole run. While we wait, Python's default handler is installed instead, so the
      interrupt cancels the run at once; :meth:`forward` then hands the signal to the loop's own handler.
    * A process started in the background by a script (``cmd &``) inherits SIGINT *ignored*: Python never
      raises ``KeyboardInterrupt`` then, not even for ``_thread.interrupt_main()``, while Polars (whose
      import installs its own OS-level handler over the ignore) still aborts its queries on the signal.
      While we wait, Python's default handler is installed too, so the run stops like Polars's queries.

    On leaving, the OS-level handler is put back exactly as it was (:func:`_os_sigint`): ``signal.signal``
    alone would leave Python's handler where Polars's was, and Polars would stop seeing interrupts (a
    streamed run, which relies on them on its pool threads, would then miss every later Ctrl-C).
    Elsewhere (a default handler already, SIG_DFL, a handler not set from Python) nothing is changed.
    """

    def __init__(self) -> None:
        self.active = False
        self.forwarding = False
        self._previous: Any = None
        self._os_action: Any = None

    def __enter__(self) -> _SigintGuard:
        if threading.current_thread() is not threading.main_thread():
            return self
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.SIG_IGN:
            pass  # inherited as ignored: see the class docstring
        elif previous is signal.default_int_handler or not callable(previous):
            return self  # already raising KeyboardInterrupt, or SIG_DFL / not from Python
        else:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return self  # a handler of the program's own, outside any loop: its choice
            self.forwarding = True
        self._previous = previous
        self._os_action = _os_sigint()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.active = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.active:
            signal.signal(signal.SIGINT, self._previous)
            _set_os_sigint(self._os_action)

    def forward(self) -> None:
        """Run the loop owner's SIGINT handler, as if the signal had reached it."""
        with contextlib.suppress(Exception):
            self._previous(signal.SIGINT, None)


_LIBC: Any = None
if hasattr(signal, "pthread_sigmask"):  # POSIX: sigaction is in the C library already loaded
    with contextlib.suppress(OSError, AttributeError):
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.sigaction.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_SIGACTION_SIZE = 512  # larger than any platform's struct sigaction (152 bytes on Linux x86-64)


def _os_sigint() -> Any:
    """The OS-level SIGINT action as raw bytes (``None`` where sigaction is not available).

    >>> raw = _os_sigint()
    >>> _set_os_sigint(raw)
    """
    if _LIBC is None:
        return None
    buffer = ctypes.create_string_buffer(_SIGACTION_SIZE)
    if _LIBC.sigaction(signal.SIGINT, None, buffer) != 0:
        return None
    return buffer


def _set_os_sigint(action: Any) -> None:
    """Put back an action read by :func:`_os_sigint` (after ``signal.signal`` restored Python's own)."""
    if _LIBC is not None and action is not None:
        _LIBC.sigaction(signal.SIGINT, action, None)


async def run_async(fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
    """``await fn(*args, **kwargs)`` on the caller's loop, with errors as clean as :func:`run_sync`'s.

    A single error inside task groups comes out unwrapped. Cancellation (a Jupyter kernel turns an
    interrupt of an ``await`` cell into cancelling the cell's task) propagates as a fresh
    ``CancelledError`` (same message) once ``fn`` has finished cleaning up, so the cell shows a short
    traceback instead of the engine's task-group internals.

    >>> import asyncio
    >>> async def add(a, b):
    ...     return a + b
    >>> asyncio.run(run_async(add, 1, 2))
    3
    """
    __tracebackhide__ = True
    cancelled: tuple[object, ...] | None = None
    error: BaseException | None = None
    try:
        return await fn(*args, **kwargs)
    except asyncio.CancelledError as exc:
        cancelled = exc.args  # keep the message: anyio recognises its own cancel scopes by it
    except BaseException as exc:
        error = _unwrap(exc)
    if error is not None:
        raise _detach_groups(error).with_traceback(error.__traceback__)
    raise asyncio.CancelledError(*cancelled) from None


def _detach_groups(error: BaseException) -> BaseException:
    """Cut ``error``'s ``__context__`` chain at the first ExceptionGroup.

    IPython 9 renders an exception whose context chain holds an ExceptionGroup with a bare
    ``traceback.print_exc()`` to stderr and sends *no* error output (no ``ename``, nothing for nbclient or
    the UI to show as an error). The groups come from our task groups and tell the user nothing.
    """
    current, seen = error, set()
    while current.__context__ is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current.__context__, BaseExceptionGroup):
            current.__context__ = None
            break
        current = current.__context__
    return error


def _wait_ignoring_interrupts(finished: threading.Event) -> None:
    deadline = time.monotonic() + _CANCEL_GRACE
    while time.monotonic() < deadline:
        try:
            if finished.wait(_POLL):
                return
        except KeyboardInterrupt:  # a second Ctrl-C while we flush: keep flushing
            continue


def _join_worker_threads(loops: list[asyncio.AbstractEventLoop]) -> None:
    """Join the ``anyio.to_thread`` workers of our finished loop.

    anyio tells them to stop when the loop's root task ends but does not wait for them; joining here
    means a caller who lists ``threading.enumerate()`` right after a run (or an interrupt) finds none.
    """
    if not loops:
        return
    loop = loops[0]
    deadline = time.monotonic() + _JOIN_WORKERS
    for thread in threading.enumerate():
        if getattr(thread, "loop", None) is loop and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


F = TypeVar("F", bound=Callable[..., Any])


def surfaced(fn: F) -> F:
    """Make errors of a public entry point surface there: same type and message, a short traceback.

    A :class:`~polars_llm.PolarsLLMError` or ``KeyboardInterrupt`` escaping ``fn`` is raised again from
    this frame as a copy, ``from None``: a notebook shows the user's line and one readable message instead
    of ~30 lines through the namespace, pipeline and bridge, while the original (with its full traceback)
    stays reachable as ``__context__`` for debugging.
    """

    def restate(error: BaseException) -> BaseException:
        if isinstance(error, KeyboardInterrupt):
            return KeyboardInterrupt(*error.args)
        return remember(copy.copy(error))

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awrapper(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True
            try:
                return await fn(*args, **kwargs)
            except PolarsLLMError as error:
                raise restate(error) from None

        return awrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True
        try:
            return fn(*args, **kwargs)
        except (PolarsLLMError, KeyboardInterrupt) as error:
            raise restate(error) from None

    return wrapper  # type: ignore[return-value]
