"""Progress of a ``prompt_map`` run: the tqdm bar where it can draw, else printed lines.

A bar needs a terminal (stderr is a TTY) or a notebook; elsewhere (logs, CI, pipes) a line with the
status counts and a rolling requests/min is printed every ``progress_update_every`` finished prompts,
as the seed did.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

import anyio

from .._engine.run import RunStats
from .._progress.bar import Progress, RateMeter, format_postfix, in_notebook

__all__ = ["SeedReporter", "bar_supported"]

_TICK = 0.25


def bar_supported() -> bool:
    """A live bar makes sense in a notebook or when stderr is a terminal."""
    if in_notebook():
        return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class SeedReporter:
    """Reports one run; every method is a no-op when ``verbose`` is false.

    >>> import io
    >>> out = io.StringIO()
    >>> r = SeedReporter(RunStats(total=3), every=2, verbose=True, n_prompts=4, bar=False, out=out)
    >>> r.started(r.stats); r.stats.done = 2; r.tick(); r.close()
    >>> print(out.getvalue().splitlines()[0])
    Total: 4 prompts (3 unique) | already done: 0 | remaining: 3
    """

    def __init__(
        self,
        stats: RunStats,
        *,
        every: int,
        verbose: bool,
        n_prompts: int,
        bar: bool | None = None,
        out: TextIO | None = None,
    ) -> None:
        self.stats = stats
        self.every = every
        self.verbose = verbose
        self.n_prompts = n_prompts
        self.out = out
        use_bar = verbose and (bar_supported() if bar is None else bar)
        self.bar = Progress(stats, enabled=use_bar, desc="prompt_map")
        self._next = every
        self._printed_at = -1
        self._meter = RateMeter()

    def _print(self, text: str) -> None:
        if self.verbose:
            print(text, file=self.out if self.out is not None else sys.stdout, flush=True)

    def open(self) -> None:
        self.bar.open()

    def started(self, stats: RunStats) -> None:
        """The engine knows what is cached: say what is left."""
        self._print(
            f"Total: {self.n_prompts} prompts ({stats.total} unique) | already done: {stats.cached} "
            f"| remaining: {stats.total - stats.cached}"
        )
        self._meter.rate(stats.requests)  # the rate is measured from here
        self.bar.started(stats)

    def rpm(self) -> float:
        """Requests per minute over the last minute."""
        return self._meter.rate(self.stats.requests)

    def line(self) -> str:
        s = self.stats
        remaining = max(0, s.total - s.cached - s.finished)
        return (
            f"[{time.strftime('%H:%M:%S')}] progress: {format_postfix(s, self.rpm())} "
            f"in_flight={s.in_flight} remaining={remaining}"
        )

    def tick(self) -> None:
        """Print a line when another ``every`` prompts have finished since the last one."""
        finished = self.stats.finished
        if finished >= self._next:
            self._print(self.line())
            self._printed_at = finished
            self._next = (finished // self.every + 1) * self.every

    async def run(self) -> None:
        """Refresh until cancelled."""
        if not self.verbose:
            return
        if self.bar.enabled:
            await self.bar.run()
            return
        while True:
            self.tick()
            await anyio.sleep(_TICK)

    def close(self, *, error: bool = False) -> None:
        self.bar.close(error=error)
        if not self.verbose:
            return
        s = self.stats
        if not self.bar.enabled and s.finished and s.finished != self._printed_at:
            self._print(self.line())
        if error:
            self._print(f"Batch stopped: done={s.done} failed={s.failed}; finished prompts are kept")
        else:
            self._print(f"Batch complete: done={s.done + s.cached} failed={s.failed}")
