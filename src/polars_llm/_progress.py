"""Progress bar: tqdm (a widget in notebooks with ipywidgets, text elsewhere), fed from RunStats.

The bar is created on the caller's thread and refreshed a few times a second by a task on the engine's
loop, so no per-row cost. It is always closed, also after an interrupt or an error.
"""

from __future__ import annotations

import functools
import sys
import time
from collections import deque
from typing import Any

import anyio

from ._engine import RunStats

__all__ = ["Progress"]

_TICK = 0.25
_WINDOW = 60.0


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()  # type: ignore[attr-defined]
    except Exception:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


@functools.cache
def _text_tqdm() -> Any:
    from tqdm.std import tqdm as text_tqdm

    class _TextBar(text_tqdm):  # type: ignore[misc,valid-type]
        monitor_interval = 0  # refreshed by our own task: no tqdm_monitor thread left behind

    return _TextBar


def _tqdm_class() -> Any:
    """The widget bar in a Jupyter kernel with ipywidgets; the text bar everywhere else.

    Unlike ``tqdm.auto`` this never warns ``IProgress not found``: without ipywidgets the text bar is
    chosen up front.
    """
    if _in_notebook():
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            return _text_tqdm()
        return _widget_tqdm()
    return _text_tqdm()


@functools.cache
def _widget_tqdm() -> Any:
    from tqdm.notebook import tqdm as notebook_tqdm

    class _WidgetBar(notebook_tqdm):  # type: ignore[misc,valid-type]
        monitor_interval = 0

    return _WidgetBar


def format_postfix(stats: RunStats, rpm: float) -> str:
    """The text after the bar.

    >>> format_postfix(RunStats(done=5, failed=1, retrying=2, tokens_in=10, tokens_out=20, cost=0.5), 120.0)
    'done=5 failed=1 retrying=2 rpm=120 tok=30 $0.5000'
    """
    text = f"done={stats.done} failed={stats.failed} retrying={stats.retrying} rpm={rpm:,.0f}"
    tokens = stats.tokens_in + stats.tokens_out
    if tokens:
        text += f" tok={tokens:,}"
    if stats.cost:
        text += f" ${stats.cost:.4f}"
    return text


class Progress:
    """A progress bar over one run. ``enabled=False`` makes every method a no-op."""

    def __init__(self, stats: RunStats, *, enabled: bool = True, desc: str = "llm") -> None:
        self.stats = stats
        self.enabled = enabled
        self.desc = desc
        self._bar: Any = None
        self._samples: deque[tuple[float, int]] = deque()

    def open(self) -> None:
        if not self.enabled or self._bar is not None:
            return
        options: dict[str, Any] = {
            "total": self.stats.total or None,
            "desc": self.desc,
            "unit": "req",
            "dynamic_ncols": True,
            "mininterval": _TICK,
            "file": sys.stderr,
        }
        try:
            self._bar = _tqdm_class()(**options)
        except ImportError:  # ipywidgets present but unusable (too old, no IProgress): text instead
            self._bar = _text_tqdm()(**options)
        self._show_cached()

    def _show_cached(self) -> None:
        if self._bar is not None and self.stats.cached:
            self._bar.total = self.stats.total
            self._bar.n = self._bar.initial = self.stats.cached  # the rate counts only this run's rows
            self._bar.set_description(f"{self.desc} ({self.stats.cached:,} cached)", refresh=False)

    def started(self, stats: RunStats) -> None:
        """Called by the engine once the cached rows are known."""
        if self._bar is not None:
            self._bar.total = stats.total
            self._show_cached()
            self._bar.refresh()

    def _rpm(self) -> float:
        now = time.monotonic()
        finished = self.stats.requests
        self._samples.append((now, finished))
        while self._samples and now - self._samples[0][0] > _WINDOW:
            self._samples.popleft()
        t0, n0 = self._samples[0]
        return (finished - n0) / (now - t0) * 60.0 if now > t0 else 0.0

    def update(self) -> None:
        bar = self._bar
        if bar is None:
            return
        bar.n = self.stats.cached + self.stats.finished
        bar.set_postfix_str(format_postfix(self.stats, self._rpm()), refresh=False)
        bar.refresh()

    async def run(self) -> None:
        """Refresh until cancelled."""
        if self._bar is None:
            return
        while True:
            self.update()
            await anyio.sleep(_TICK)

    def close(self, *, error: bool = False) -> None:
        bar = self._bar
        if bar is None:
            return
        self._bar = None
        try:
            bar.n = self.stats.cached + self.stats.finished
            bar.set_postfix_str(format_postfix(self.stats, self._rpm()), refresh=False)
            if error and hasattr(bar, "colour"):
                bar.colour = "red"
            bar.refresh()
        finally:
            bar.close()
