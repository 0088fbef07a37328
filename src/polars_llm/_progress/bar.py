"""Progress bar: tqdm (a widget in notebooks with ipywidgets, text elsewhere), fed from RunStats.

The bar is created on the caller's thread and refreshed a few times a second by a task on the engine's
loop, so no per-row cost. It is always closed, also after an interrupt or an error.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import time
from collections import deque
from collections.abc import Iterator
from typing import Any, Protocol

import anyio

from .._cost import usd
from .stats import RunStats

__all__ = [
    "Progress",
    "RateMeter",
    "Reporter",
    "format_final",
    "format_postfix",
    "in_notebook",
    "keep_bar_wide",
    "reporting",
]

_TICK = 0.25
_WINDOW = 60.0


def in_notebook() -> bool:
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
    if in_notebook():
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

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            keep_bar_wide(self.container)

    return _WidgetBar


def keep_bar_wide(container: Any) -> None:
    """Give the widget bar a minimum width, so a long stats text wraps below it instead of squeezing
    the bar to a few pixels (tqdm's row of [description, bar, text] lets the bar shrink to nothing)."""
    children = getattr(container, "children", ())
    if len(children) == 3:
        children[1].layout.min_width = "40%"
        container.layout.flex_flow = "row wrap"


class Reporter(Protocol):
    """What a run needs from a progress display (:class:`Progress`, the seed API's reporter)."""

    stats: RunStats

    def open(self) -> None: ...

    def started(self, stats: RunStats) -> None: ...

    async def run(self) -> None: ...

    def close(self, *, error: bool = False) -> None: ...


@contextlib.contextmanager
def reporting(reporter: Reporter) -> Iterator[Reporter]:
    """Open ``reporter`` for the block; close it, marked as failed when the block raises."""
    reporter.open()
    try:
        yield reporter
    except BaseException:
        reporter.close(error=True)
        raise
    reporter.close()


class RateMeter:
    """Requests per minute over a rolling window, from samples of a running count.

    >>> m = RateMeter(clock=iter([0.0, 30.0]).__next__)
    >>> m.rate(0), m.rate(50)
    (0.0, 100.0)
    """

    def __init__(self, window: float = _WINDOW, clock: Any = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._samples: deque[tuple[float, int]] = deque()

    def rate(self, count: int) -> float:
        now = self._clock()
        self._samples.append((now, count))
        while len(self._samples) > 1 and now - self._samples[0][0] > self._window:
            self._samples.popleft()
        t0, n0 = self._samples[0]
        return (count - n0) / (now - t0) * 60.0 if now > t0 else 0.0


def format_final(stats: RunStats) -> str:
    """The text after a finished bar: what the run did, the cached rows counted in, no live pace.

    >>> format_final(RunStats(total=10, cached=4, done=5, failed=1, tokens_in=10, tokens_out=20, cost=0.5))
    'done=9 (4 cached) failed=1 tok=30 $0.500'
    >>> format_final(RunStats(total=3, done=3, cost=0.25, spent_before=0.5, budget=2.0))
    'done=3 failed=0 $0.750/$2.00'
    """
    cached = f" ({stats.cached:,} cached)" if stats.cached else ""
    return f"done={stats.done + stats.cached:,}{cached} failed={stats.failed:,}{_tokens_and_money(stats)}"


def _tokens_and_money(stats: RunStats) -> str:
    """`` tok=N`` and the money (``spent/budget`` with ``max_cost``), as both bar texts show them."""
    text = ""
    tokens = stats.tokens_in + stats.tokens_out
    if tokens:
        text += f" tok={tokens:,}"
    if stats.budget is not None:
        text += f" {usd(stats.spent_before + stats.cost)}/{usd(stats.budget)}"
    elif stats.cost:
        text += f" {usd(stats.cost)}"
    return text


def format_postfix(stats: RunStats, rpm: float) -> str:
    """The text after the bar: counts, requests/min, tokens, money (``spent/budget`` with ``max_cost``),
    then the pace the run keeps — learned from 429s, announced by the provider's headers, or the client
    limit — or, while everybody waits, for how long and why.

    >>> format_postfix(RunStats(done=5, failed=1, retrying=2, tokens_in=10, tokens_out=20, cost=0.5), 120.0)
    'done=5 failed=1 retrying=2 rpm=120 tok=30 $0.500'
    >>> format_postfix(RunStats(done=5, cost=0.25, spent_before=0.5, budget=2.0), 60.0)
    'done=5 failed=0 retrying=0 rpm=60 $0.750/$2.00'
    >>> format_postfix(RunStats(done=1, cost=0.0005, budget=0.002), 60.0)  # small sums keep their digits
    'done=1 failed=0 retrying=0 rpm=60 $0.000500/$0.00200'
    >>> paced = RunStats(done=5, pacing=lambda: (2940.0, "learned", 0.0, ""))
    >>> format_postfix(paced, 2900.0)
    'done=5 failed=0 retrying=0 rpm=2,900 pace≤2,940/min (learned)'
    >>> paused = RunStats(pacing=lambda: (600.0, "learned", 28.4, "provider asked to wait 30 s"))
    >>> format_postfix(paused, 0.0)
    'done=0 failed=0 retrying=0 rpm=0 | paused 29 s: provider asked to wait 30 s'
    """
    text = f"done={stats.done} failed={stats.failed} retrying={stats.retrying} rpm={rpm:,.0f}"
    text += _tokens_and_money(stats)
    if stats.pacing is not None:
        allowed, source, paused, why = stats.pacing()
        if paused > 0:
            text += f" | paused {math.ceil(paused):,} s: {why}"
        elif allowed is not None:
            text += f" pace≤{allowed:,.0f}/min ({source})"
    return text


class Progress:
    """A progress bar over one run. ``enabled=False`` makes every method a no-op."""

    unit = "req"

    def __init__(self, stats: RunStats, *, enabled: bool = True, desc: str = "llm") -> None:
        self.stats = stats
        self.enabled = enabled
        self.desc = desc
        self._bar: Any = None
        self._meter = RateMeter()

    def open(self) -> None:
        if not self.enabled or self._bar is not None:
            return
        options: dict[str, Any] = {
            "total": self.stats.total or None,
            "desc": self.desc,
            "unit": self.unit,
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
        return self._meter.rate(self.stats.requests)

    def _position(self) -> int:
        """Where the bar stands: requests answered, from the cache or sent."""
        return self.stats.cached + self.stats.finished

    def _postfix(self) -> str:
        return format_postfix(self.stats, self._rpm())

    def _final(self) -> str:
        """The text a finished bar keeps: what the run did, without a live pace."""
        return format_final(self.stats)

    def update(self) -> None:
        bar = self._bar
        if bar is None:
            return
        bar.n = self._position()
        bar.set_postfix_str(self._postfix(), refresh=False)
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
            bar.n = self._position()
            # a stopped run keeps its live text (why it waited…); a finished one says what it did
            bar.set_postfix_str(self._postfix() if error else self._final(), refresh=False)
            if error and hasattr(bar, "colour"):
                bar.colour = "red"
            bar.refresh()
        finally:
            bar.close()
