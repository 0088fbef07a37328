"""The two ways a call is answered, chosen in one place (:func:`mode_of`): online or batch.

Both take a call's keys and prompts and return the state frame (``key, status, result, ...``); the rest
of the pipeline asks the :class:`Mode` rather than testing ``cfg.mode``. Online, the engine sends the
requests now (:mod:`polars_llm._engine`); batch mode uploads them to the provider's batch API and
collects the answers when they are ready (:mod:`polars_llm._batch`). A new mode is one class here and
one name in :func:`mode_of`.

>>> from polars_llm import MapConfig
>>> mode_of(MapConfig(model="m", api_key="k", cache=None)).streams
True
>>> mode_of(MapConfig(model="m", api_key="k", cache="/tmp/c.duckdb", mode="batch")).streams
False
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import polars as pl

from .._batch import BATCH_PRICE_FACTOR, BatchProgress, BatchStats, batch_note, execute_batch
from .._config import MapConfig
from .._engine import Work, execute
from .._progress import Progress, RunStats
from ..exceptions import ConfigError

if TYPE_CHECKING:
    from .._cost import Price

__all__ = ["Mode", "mode_of"]


class Mode(Protocol):
    """How the requests of a call are answered."""

    streams: bool
    """Whether a LazyFrame may be answered chunk by chunk as it is read (else the column at once)."""

    def check(self, work: Work | None) -> None:
        """Raise :class:`~polars_llm.ConfigError` if this mode cannot send ``work`` (before any request)."""
        ...

    def progress(self, total: int, *, enabled: bool) -> Progress:
        """The progress display of a run of ``total`` requests."""
        ...

    def price(self, price: Price) -> Price:
        """What the provider charges in this mode for tokens listed at ``price``."""
        ...

    def stopped_note(self, stats: RunStats, cfg: MapConfig) -> str | None:
        """What a stopped run says it leaves behind (``None``: the online wording)."""
        ...

    async def execute(
        self,
        cfg: MapConfig,
        keys: pl.Series,
        prompts: pl.Series,
        *,
        stats: RunStats,
        on_start: Callable[[RunStats], None],
        work: Work | None,
    ) -> pl.DataFrame:
        """Make sure every key is answered (or say why not); the state frame of every key."""
        ...


class _Online:
    streams = True

    def check(self, work: Work | None) -> None:
        return None

    def progress(self, total: int, *, enabled: bool) -> Progress:
        return Progress(RunStats(total=total), enabled=enabled)

    def price(self, price: Price) -> Price:
        return price

    def stopped_note(self, stats: RunStats, cfg: MapConfig) -> str | None:
        return None

    async def execute(
        self,
        cfg: MapConfig,
        keys: pl.Series,
        prompts: pl.Series,
        *,
        stats: RunStats,
        on_start: Callable[[RunStats], None],
        work: Work | None,
    ) -> pl.DataFrame:
        return await execute(cfg, keys, prompts, stats=stats, on_start=on_start, work=work)


class _Batch:
    streams = False  # batches hold a whole run's rows: the column at once, not streamed

    def check(self, work: Work | None) -> None:
        if work is not None:
            raise ConfigError(
                "mode='batch' takes a String prompt column; struct input (per-row system, images, messages, "
                "model) runs online only (mode='online')"
            )

    def progress(self, total: int, *, enabled: bool) -> Progress:
        return BatchProgress(BatchStats(total=total), enabled=enabled)

    def price(self, price: Price) -> Price:
        return price.scaled(BATCH_PRICE_FACTOR)

    def stopped_note(self, stats: RunStats, cfg: MapConfig) -> str | None:
        return batch_note(stats, cfg)

    async def execute(
        self,
        cfg: MapConfig,
        keys: pl.Series,
        prompts: pl.Series,
        *,
        stats: RunStats,
        on_start: Callable[[RunStats], None],
        work: Work | None,
    ) -> pl.DataFrame:
        self.check(work)
        return await execute_batch(cfg, keys, prompts, stats=stats, on_start=on_start)


_MODES: dict[str, Mode] = {"online": _Online(), "batch": _Batch()}


def mode_of(cfg: MapConfig) -> Mode:
    """The mode ``cfg`` asks for: the one place that dispatches on ``cfg.mode`` (``MapConfig`` only checks
    which options batch mode rules out: ``worker=``, ``cache=None``)."""
    return _MODES[cfg.mode]
