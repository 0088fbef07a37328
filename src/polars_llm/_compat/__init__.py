"""The seed API's pieces: its results database and its progress line.

Other parts import from this package only: its names are those its modules declare in ``__all__``.
"""

from __future__ import annotations

from .progress import *
from .results_db import *
