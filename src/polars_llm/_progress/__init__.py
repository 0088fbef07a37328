"""Progress: the bar and the run's counters."""

from __future__ import annotations

from .bar import Progress, RateMeter, Reporter, format_postfix, in_notebook, reporting
from .stats import RunStats

__all__ = ["Progress", "RateMeter", "Reporter", "RunStats", "format_postfix", "in_notebook", "reporting"]
