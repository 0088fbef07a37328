"""The simulator's lifecycle: an aiohttp server on its own event loop in a daemon thread.

:class:`SimServer` *is* its base URL (a ``str`` subclass), so it can be passed straight as
``base_url``. Starting takes a few milliseconds; :meth:`SimServer.stop` closes the listening socket and
every connection and joins the thread. Because the server owns its thread and loop, it works the same
from plain scripts, pytest and inside a running event loop (a Jupyter cell).

>>> from polars_llm.sim import serve
>>> with serve(latency=0.0) as server:
...     server.startswith("http://127.0.0.1:"), server.endswith("/v1"), server.stats()["requests"]
(True, True, 0)
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from ..exceptions import ConfigError
from ._app import SimApp
from ._options import SimConfig

__all__ = ["SimServer", "serve", "start"]

_LIVE: dict[int, SimServer] = {}
_LIVE_LOCK = threading.Lock()


class SimServer(str):
    """A running simulated OpenAI-compatible server; the string value is the base URL (``.../v1``).

    Create it with :func:`serve` (a context manager) or :func:`start`; ``SimServer(config, **options)``
    starts it directly. Pickling or copying gives the plain URL string.
    """

    _app: SimApp
    _sock: socket.socket
    _thread: threading.Thread
    _loop: asyncio.AbstractEventLoop | None
    _stop_requested: asyncio.Event
    _error: BaseException | None
    _stopped: bool
    _port: int

    def __new__(cls, config: SimConfig | None = None, /, **options: Any) -> SimServer:
        try:
            cfg = config.replace(**options) if config is not None else SimConfig(**options)
        except TypeError as exc:  # unknown keyword for SimConfig(...)
            raise ConfigError(str(exc)) from None
        sock = _listen(cfg)
        port = sock.getsockname()[1]
        host = cfg.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        self = super().__new__(cls, f"http://{host}:{port}/v1")
        self._app = SimApp(cfg)
        self._sock = sock
        self._port = port
        self._loop = None
        self._error = None
        self._stopped = False
        self._stop_requested = asyncio.Event()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"polars-llm-sim:{port}", daemon=True
        )
        try:
            self._thread.start()
            ready.wait()
        except BaseException:
            sock.close()
            raise
        if self._error is not None:
            self._thread.join()
            raise self._error
        with _LIVE_LOCK:
            _LIVE[id(self)] = self
        return self

    # ------------------------------------------------------------------------- public

    @property
    def base_url(self) -> str:
        """The base URL as a plain ``str`` (``http://127.0.0.1:PORT/v1``)."""
        return str(self)

    @property
    def url(self) -> str:
        """The server root, without ``/v1`` (``/stats``, ``/reset`` and ``/configure`` live there)."""
        return str(self)[: -len("/v1")]

    @property
    def port(self) -> int:
        return self._port

    @property
    def config(self) -> SimConfig:
        """The options in force now."""
        return self._app.config

    @property
    def running(self) -> bool:
        return not self._stopped and self._thread.is_alive()

    def stats(self, per_prompt: bool = True) -> dict[str, Any]:
        """Counters since start (or the last :meth:`reset`); thread-safe.

        Keys: ``requests`` (chat and embeddings requests received), ``ok`` (well-formed completions answered),
        ``status_counts`` (``{"200": n, "429": n, ...}``), ``per_prompt`` (``{prompt: requests}``,
        omitted with ``per_prompt=False``), ``unique_prompts``, ``in_flight``, ``max_in_flight``,
        ``cancelled`` (handlers cut off by a client disconnect), ``tokens_in``, ``tokens_out``,
        ``cost`` (USD, of ``ok`` answers), ``faults`` (``{kind: n}``), ``burst_active``,
        ``embedding_requests`` / ``embedding_inputs`` (``/embeddings`` requests and the texts they held;
        ``requests`` and ``per_prompt`` count them too) and ``logged_requests`` (see :meth:`requests`).
        """
        return self._app.stats(per_prompt=per_prompt)

    def requests(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The request bodies received last, oldest first: ``[{"path": ..., "body": {...}}, ...]``.

        At most ``request_log`` (default 1000) are kept; ``limit`` returns only the last ``limit``.
        Also ``GET /requests?limit=N``. :meth:`reset` empties it.
        """
        return self._app.requests(limit)

    def reset(self) -> None:
        """Zero the counters, forget ``:N`` marker attempts and rate-limit windows, reseed the RNG."""
        self._app.reset()

    def configure(self, **changes: Any) -> SimConfig:
        """Change options live (all but host/port/backlog), e.g. ``configure(fail_mode=401)``.

        Setting ``burst_429=True`` (or a new ``burst_seconds`` while on) starts a fresh 429 storm.
        """
        return self._app.configure(**changes)

    def batches(self) -> list[dict[str, Any]]:
        """Every batch submitted to this server (oldest first), as ``GET /v1/batches/{id}`` shows it now."""
        return self._app.batches.list()

    def finish_batches(self, outcome: str | None = None) -> list[str]:
        """End every running batch now: ``completed``, ``expired``, ``failed`` or ``cancelled`` (default:
        the ``batch_outcome`` option); returns their ids. With ``batch_seconds=None`` batches wait for this.
        """
        return self._app.batches.finish(outcome)

    def burst(self, seconds: float = 5.0, retry_after: float = 1.0) -> SimConfig:
        """Answer every chat request 429 (``Retry-After: retry_after``) for the next ``seconds``."""
        return self._app.configure(burst_429=True, burst_seconds=seconds, burst_retry_after=retry_after)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, close every socket and join the thread. Idempotent."""
        with _LIVE_LOCK:
            if self._stopped:
                return
            self._stopped = True
            _LIVE.pop(id(self), None)
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(self._stop_requested.set)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def __enter__(self) -> SimServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"SimServer({str(self)!r}, running={self.running})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (str, (str(self),))

    def __copy__(self) -> str:
        return str(self)

    def __deepcopy__(self, memo: dict[int, Any]) -> str:
        return str(self)

    # ----------------------------------------------------------------------- thread

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        except BaseException as exc:
            if not ready.is_set():
                self._error = exc
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()
                self._sock.close()
                ready.set()

    async def _serve(self, ready: threading.Event) -> None:
        cfg = self._app.config
        runner = web.AppRunner(
            self._app.app(),
            access_log=None,
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=cfg.shutdown_timeout,
        )
        await runner.setup()
        try:
            site = web.SockSite(runner, self._sock, backlog=cfg.backlog)
            await site.start()
            ready.set()
            await self._stop_requested.wait()
        finally:
            await runner.cleanup()


def _listen(cfg: SimConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((cfg.host, cfg.port))
        sock.listen(cfg.backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def start(config: SimConfig | None = None, /, **options: Any) -> SimServer:
    """Start a simulator and return it (call :meth:`SimServer.stop` when done; also stopped at exit)."""
    return SimServer(config, **options)


@contextlib.contextmanager
def serve(config: SimConfig | None = None, /, **options: Any) -> Iterator[SimServer]:
    """Run a simulator for the duration of a ``with`` block; options are :class:`SimConfig` fields.

    Without ``port=`` it listens on a free port, a new one each time. The base URL is part of every
    request's content key, so a script that starts a new simulator per run sends every request again;
    pass a fixed ``port=`` (as ``polars-llm demo`` does) for reruns to come from the cache.

    >>> with serve(rate_limit=100, window=1.0, api_key="sk-test") as server:
    ...     server.config.rate_limit
    100
    """
    server = SimServer(config, **options)
    try:
        yield server
    finally:
        server.stop()


@atexit.register
def _stop_all() -> None:
    with _LIVE_LOCK:
        servers = list(_LIVE.values())
    for server in servers:
        server.stop(timeout=2.0)
