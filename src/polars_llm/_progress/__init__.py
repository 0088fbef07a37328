"""Progress: the bar and the run's counters.

Other parts import from this package only: its names are those its modules declare in ``__all__``.
"""

from __future__ import annotations

from .bar import *
from .stats import *
