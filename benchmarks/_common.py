"""Shared plumbing: the simulator in its own process, child-process cases, stats polling, machine info.

Every measurement runs in a fresh child process (``python -m benchmarks.<case> '<json params>'``) so its
peak RSS is its own and no two arms share an interpreter, and the simulator runs in yet another process
so it never shares the GIL with the client being measured.

>>> make_prompts(2, "x")[1]
'x 1: please summarise the following short passage of text in one line'
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "API_KEY",
    "BENCH_DIR",
    "MODEL",
    "ROOT",
    "SimProcess",
    "StatsPoller",
    "child_main",
    "cpu_seconds",
    "library_versions",
    "machine_info",
    "make_prompts",
    "peak_rss_mb",
    "rss_mb",
    "run_child",
    "steady_rate",
    "windowed_rate",
    "write_result",
]

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
MODEL = "bench/echo"
API_KEY = "sk-bench"


def make_prompts(n: int, prefix: str) -> list[str]:
    """``n`` unique prompts of ~70 characters (~17 tokens), distinct across prefixes."""
    return [
        f"{prefix} {i}: please summarise the following short passage of text in one line" for i in range(n)
    ]


def rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux ``/proc``; falls back to peak)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB.

    On Linux this is ``VmHWM`` from ``/proc/self/status``: ``ru_maxrss`` is not reset by ``exec``, so a
    child started by a big parent would report the parent's peak (measured here: every case run after the
    parent built a 10M-row input reported the parent's 2.5 GiB). Elsewhere ``ru_maxrss`` (bytes on macOS).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------------------- simulator


class SimProcess:
    """``python -m polars_llm.sim`` in a subprocess; the base URL is read from its first line of output.

    Control goes over HTTP (``/stats``, ``/reset``, ``/configure``), exactly as from another machine.
    """

    def __init__(self, **options: Any) -> None:
        args = [sys.executable, "-m", "polars_llm.sim", "--port", "0", "--models", MODEL]
        for name, value in options.items():
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + flag[2:])
            else:
                args += [flag, str(value)]
        self.options = options
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http"):
            self.proc.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"simulator did not start: {line!r} {err}")
        self.url = line
        self.root = line[: -len("/v1")]
        self._cpu0 = self.cpu_seconds()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.root + path, timeout=30) as resp:
            return json.load(resp)

    def _post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body or {}).encode()
        req = urllib.request.Request(
            self.root + path, data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)

    def stats(self) -> dict[str, Any]:
        return self._get("/stats?per_prompt=0")

    def reset(self) -> None:
        self._post("/reset")

    def configure(self, **changes: Any) -> dict[str, Any]:
        return self._post("/configure", changes)

    def cpu_seconds(self) -> float:
        """User + system CPU seconds the simulator process has used (``/proc/<pid>/stat``)."""
        try:
            with open(f"/proc/{self.pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StatsPoller:
    """Samples the simulator's counters every ``interval`` seconds in a thread.

    ``samples`` holds ``(monotonic time, stats)``; ``CLOCK_MONOTONIC`` is system-wide on Linux, so the
    times line up with samples taken in a child process.
    """

    def __init__(self, sim: SimProcess, interval: float = 0.2) -> None:
        self.sim = sim
        self.interval = interval
        self.samples: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                s = self.sim.stats()
            except OSError:
                pass
            else:
                self.samples.append((time.monotonic(), s))
            self._stop.wait(self.interval)

    def series(self, field: str) -> list[tuple[float, float]]:
        """``(t, value)`` of one counter; ``"429"`` / ``"200"`` read ``status_counts``; ``"tokens"`` sums."""
        out = []
        for t, s in self.samples:
            if field.isdigit():
                value = s["status_counts"].get(field, 0)
            elif field == "tokens":
                value = s["tokens_in"] + s["tokens_out"]
            else:
                value = s[field]
            out.append((t, float(value)))
        return out

    def __enter__(self) -> StatsPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def steady_rate(
    series: list[tuple[float, float]], lo: float = 0.1, hi: float = 0.9, skip: float = 0.0
) -> float | None:
    """Rate of a counter while it climbs from ``lo`` to ``hi`` of its final increase: the least-squares
    slope of the samples in that stretch (start-up and tail excluded; a bursty staircase, as under a
    sliding-window limit, averages out instead of depending on where the end points fall).

    ``skip``: also leave out the first ``skip`` seconds after the counter first moves (e.g. the first
    window of a sliding-window rate limit, which admits a full window's burst at once).

    >>> round(steady_rate([(t / 10, 5.0 * t) for t in range(100)]), 6)
    50.0
    """
    if len(series) < 3:
        return None
    base = series[0][1]
    final = series[-1][1] - base
    if final <= 0:
        return None
    first = next(p for p in series if p[1] > base)[0]
    a = next((p[0] for p in series if p[1] - base >= lo * final and p[0] >= first + skip), None)
    b = next((p[0] for p in series if p[1] - base >= hi * final), None)
    if a is None or b is None or b <= a:
        return None
    pts = [p for p in series if a <= p[0] <= b]
    if len(pts) < 2:
        return None
    mt = sum(t for t, _ in pts) / len(pts)
    mv = sum(v for _, v in pts) / len(pts)
    var = sum((t - mt) ** 2 for t, _ in pts)
    return sum((t - mt) * (v - mv) for t, v in pts) / var if var else None


def windowed_rate(series: list[tuple[float, float]], window: float, hi: float = 0.9) -> float | None:
    """Rate of a counter over the largest whole number of ``window``-second windows from its start.

    Under a sliding-window cap of ``C`` per ``window``, any interval of ``k`` windows admits at most
    ``k × C``, so this rate ÷ (C / window) is a fraction of the cap however bursty the client is (a client
    that spends each window's budget in its first 0.1 s still scores 1.0). Windows end before the counter
    passes ``hi`` of its final value, so the tail where the run runs out of work is left out.

    >>> windowed_rate([(t / 10, min(t, 95) * 2.0) for t in range(120)], window=1.0)
    20.0
    """
    if len(series) < 3:
        return None
    base = series[0][1]
    final = series[-1][1] - base
    if final <= 0:
        return None
    i = next(i for i, p in enumerate(series) if p[1] > base)
    start = series[i - 1][0] if i else series[0][0]  # the last sample before the counter moved
    t_hi = next(p[0] for p in series if p[1] - base >= hi * final)
    k = int((t_hi - start) // window)
    if k < 1:
        return None
    end = start + k * window
    value = max((p for p in series if p[0] <= end), key=lambda p: p[0])[1]
    return (value - base) / (k * window)


# ------------------------------------------------------------------------------------ child processes


def run_child(
    module: str,
    params: dict[str, Any],
    *,
    timeout: float = 600.0,
    sim: SimProcess | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``python -m benchmarks.<module> '<params>'``; return its JSON result (plus simulator CPU use).

    A child that fails returns ``{"error": ...}`` instead of raising, so one broken case does not lose
    the rest of the run.
    """
    args = [sys.executable, "-m", f"benchmarks.{module}", json.dumps(params)]
    sim_cpu0 = sim.cpu_seconds() if sim is not None else None
    start = time.monotonic()
    try:
        done = subprocess.run(
            args,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            check=False,
            env={**os.environ, **env} if env else None,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:g} s", "params": params}
    wall = time.monotonic() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        return {"error": f"exit {done.returncode}: " + "\n".join(tail), "params": params}
    result: dict[str, Any] = json.loads(lines[-1])
    result["process_wall_s"] = round(wall, 3)
    if sim is not None and sim_cpu0 is not None:
        result["sim_cpu_s"] = round(sim.cpu_seconds() - sim_cpu0, 3)
        result["sim_cpu_share"] = round(result["sim_cpu_s"] / wall, 3) if wall else None
    return result


def child_main(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Entry point of a case module: params from ``argv[1]`` (JSON), one JSON line of results on stdout."""
    params = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    result = fn(params)
    result.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
    print(json.dumps(result), flush=True)


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["wall_s"] = time.perf_counter() - start


# ---------------------------------------------------------------------------------------- machine info


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "polars-llm-map",
        "polars",
        "duckdb",
        "pyarrow",
        "aiohttp",
        "orjson",
        "openai",
        "httpx2",
        "httpx",
        "anyio",
        "pydantic",
        "uvloop",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as fh:
            info["mem_total_gb"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


def write_result(out: Path, name: str, result: dict[str, Any], command: str, show: tuple[str, ...]) -> Path:
    """Add ``meta`` (machine, versions, ``command``) to ``result``, write it to
    ``<out>/<name>-<UTC timestamp>.json`` and print the ``show`` parts of it and the path."""
    from datetime import UTC, datetime

    result["meta"] = {"machine": machine_info(), "versions": library_versions(), "command": command,
                      **result.get("meta", {})}  # fmt: skip
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%MZ")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in show}, indent=2))
    print(f"written to {path}")
    return path
