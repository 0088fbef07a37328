"""Batch mode: the provider's batch API as a sibling of the online engine.

Other parts import from this package only: its names are those its modules declare in ``__all__``.
"""

from __future__ import annotations

from .admin import *
from .client import *
from .lines import *
from .progress import *
from .run import *
