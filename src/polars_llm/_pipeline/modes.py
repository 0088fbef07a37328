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

from typing import TYPE_CHECKING, Protocol

import polars as pl

from .._batch import BATCH_PRICE_FACTOR, BatchProgress, BatchStats, batch_note, execute_batch
from .._config import MapConfig
from .._engine import execute
from .._progress import Progress, Reporter, RunStats
from ..exceptions import ConfigError
from .prepared import Prepared

if TYPE_CHECKING:
    from .._cost import Price

__all__ = ["Mode", "mode_of"]


class Mode(Protocol):
    """How the requests of a call are answered."""

    streams: bool
    """Whether a LazyFrame may be answered chunk by chunk as it is read (else the column at once)."""

    def check(self, prepared: Prepared) -> None:
        """Raise :class:`~polars_llm.ConfigError` if this mode cannot send ``prepared`` (before a request)."""
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

    async def execute(self, cfg: MapConfig, prepared: Prepared, reporter: Reporter) -> pl.DataFrame:
        """Make sure every key is answered (or say why not), counting on ``reporter.stats``; the state
        frame of every key."""
        ...


class _Online:
    streams = True

    def check(self, prepared: Prepared) -> None:
        return None

    def progress(self, total: int, *, enabled: bool) -> Progress:
        return Progress(RunStats(total=total), enabled=enabled)

    def price(self, price: Price) -> Price:
        return price

    def stopped_note(self, stats: RunStats, cfg: MapConfig) -> str | None:
        return None

    async def execute(self, cfg: MapConfig, prepared: Prepared, reporter: Reporter) -> pl.DataFrame:
        keys, prompts, work = prepared.keys, prepared.unique, prepared.work
        return await execute(cfg, keys, prompts, stats=reporter.stats, on_start=reporter.started, work=work)


class _Batch:
    streams = False  # batches hold a whole run's rows: the column at once, not streamed

    def check(self, prepared: Prepared) -> None:
        if prepared.work is not None:
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

    async def execute(self, cfg: MapConfig, prepared: Prepared, reporter: Reporter) -> pl.DataFrame:
        self.check(prepared)
        keys, prompts = prepared.keys, prepared.unique
        return await execute_batch(cfg, keys, prompts, stats=reporter.stats, on_start=reporter.started)


_MODES: dict[str, Mode] = {"online": _Online(), "batch": _Batch()}


def mode_of(cfg: MapConfig) -> Mode:
    """The mode ``cfg`` asks for: the one place that dispatches on ``cfg.mode`` (``MapConfig`` only checks
    which options batch mode rules out: ``worker=``, ``cache=None``)."""
    return _MODES[cfg.mode]
