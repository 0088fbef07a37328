"""Real Jupyter kernels for tests: started with this interpreter, driven over ZMQ with jupyter_client.

A kernelspec pointing at ``sys.executable`` is written to a temporary directory, so a fresh clone needs no
``ipykernel install`` step and the kernel always imports the package under test from the same venv.

>>> with start_kernel() as kernel:                      # doctest: +SKIP
...     kernel.run("x = 1 + 1; print(x)").stdout
'2\\n'
"""

from __future__ import annotations

import json
import os
import queue
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager

__all__ = ["KERNEL_NAME", "CellResult", "Kernel", "kernel_manager", "start_kernel", "write_kernelspec"]

KERNEL_NAME = "polars-llm-test"
# Removed when the test process exits (TemporaryDirectory's finaliser).
_SPEC_ROOT = tempfile.TemporaryDirectory(prefix="polars-llm-test-kernels-")


def write_kernelspec(root: Path | None = None) -> KernelSpecManager:
    """A kernelspec ``polars-llm-test`` running ipykernel with this very interpreter."""
    root = Path(_SPEC_ROOT.name) if root is None else root
    spec_dir = root / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    argv.append("--HistoryManager.hist_file=:memory:")  # no history database in the user's home
    spec = {
        "argv": argv,
        "display_name": "polars-llm test (this venv)",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {"debugger": False},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(root)])


def kernel_manager() -> KernelManager:
    """An unstarted KernelManager for the test kernelspec."""
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=write_kernelspec())


@dataclass
class CellResult:
    """What one execute request produced, as seen on IOPub."""

    status: str = ""
    stdout: str = ""
    stderr: str = ""
    error: dict[str, Any] | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)  # display_data / execute_result content
    comm_msgs: list[dict[str, Any]] = field(default_factory=list)  # comm_open / comm_msg content
    idle_at: float = 0.0  # time.monotonic() when the kernel reported idle for this request
    value: Any = None  # the parsed text/plain of the execute_result, if it was a literal

    @property
    def ename(self) -> str | None:
        return None if self.error is None else self.error["ename"]

    @property
    def traceback(self) -> str:
        return "" if self.error is None else "\n".join(self.error.get("traceback", []))

    def widget_text(self) -> str:
        """Every string value sent to widgets (tqdm's HTML labels), joined."""
        parts: list[str] = []
        for content in self.comm_msgs:
            state = content.get("data", {}).get("state", {})
            parts.extend(str(v) for v in state.values() if isinstance(v, str))
        return "\n".join(parts)

    def widget_states(self) -> list[dict[str, Any]]:
        return [c.get("data", {}).get("state", {}) for c in self.comm_msgs]


class Kernel:
    """A started kernel and a blocking client on it."""

    def __init__(self, km: KernelManager, kc: BlockingKernelClient) -> None:
        self.km = km
        self.kc = kc

    @property
    def pid(self) -> int:
        provisioner = self.km.provisioner
        return int(provisioner.process.pid)  # type: ignore[union-attr]

    def submit(self, code: str) -> str:
        """Send a cell without waiting; collect it later with :meth:`collect`."""
        return self.kc.execute(code, allow_stdin=False, stop_on_error=False)

    def collect(
        self, msg_id: str, timeout: float = 60.0, on_message: Callable[[dict[str, Any]], None] | None = None
    ) -> CellResult:
        """Read IOPub until the kernel is idle after ``msg_id``; raise TimeoutError after ``timeout``."""
        result = CellResult()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the kernel did not finish the cell within {timeout} s")
            try:
                msg = self.kc.get_iopub_msg(timeout=min(remaining, 1.0))
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if on_message is not None:
                on_message(msg)
            kind, content = msg["msg_type"], msg["content"]
            if kind == "status" and content["execution_state"] == "idle":
                result.idle_at = time.monotonic()
                break
            if kind == "stream":
                if content["name"] == "stdout":
                    result.stdout += content["text"]
                else:
                    result.stderr += content["text"]
            elif kind == "error":
                result.error = content
            elif kind in ("display_data", "execute_result", "update_display_data"):
                result.outputs.append(content)
                if kind == "execute_result":
                    text = content["data"].get("text/plain")
                    try:
                        result.value = json.loads(text) if text is not None else None
                    except ValueError:
                        result.value = text
            elif kind in ("comm_open", "comm_msg"):
                result.comm_msgs.append(content)
        while True:
            try:
                reply = self.kc.get_shell_msg(timeout=max(1.0, deadline - time.monotonic()))
            except queue.Empty:  # what a frontend shows as a cell that never finishes
                raise AssertionError(
                    f"the kernel went idle but sent no execute_reply; stderr:\n{result.stderr}"
                ) from None
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        result.status = reply["content"]["status"]
        return result

    def run(self, code: str, timeout: float = 60.0, *, check: bool = True) -> CellResult:
        """Execute a cell and wait for it; with ``check`` an error in the cell fails loudly."""
        result = self.collect(self.submit(code), timeout)
        if check and result.error is not None:
            raise AssertionError(f"cell failed:\n{code}\n{result.traceback}")
        return result

    def value(self, expression: str, timeout: float = 30.0) -> Any:
        """Evaluate ``expression`` in the kernel and return it JSON-decoded (it must be JSON-able)."""
        result = self.run(f"import json as _j; print(_j.dumps({expression}))", timeout)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def interrupt(self) -> float:
        """Interrupt the running cell; returns ``time.monotonic()`` just before the signal was sent."""
        t0 = time.monotonic()
        self.km.interrupt_kernel()
        return t0


@contextmanager
def start_kernel(
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 60,
) -> Iterator[Kernel]:
    """Start a kernel with this interpreter, wait until it answers, and shut it down afterwards."""
    km = kernel_manager()
    kernel_env = dict(os.environ)
    kernel_env.pop("JPY_PARENT_PID", None)
    kernel_env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    if env:
        kernel_env.update(env)
    km.start_kernel(cwd=str(cwd) if cwd is not None else None, env=kernel_env)
    kc = km.blocking_client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=startup_timeout)
        yield Kernel(km, kc)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
