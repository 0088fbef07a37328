"""Run settings: the option schema (:class:`MapConfig`) and its checks.

Other parts import from this package only: its names are those its modules declare in ``__all__``.
"""

from __future__ import annotations

from .checks import *
from .options import *
from .signatures import *
