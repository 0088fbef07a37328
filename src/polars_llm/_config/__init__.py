"""Run settings: the option schema (:class:`MapConfig`), its checks, the key as a secret, resolving from the
environment.

Other parts import from this package only: its names are those its modules declare in ``__all__``.
"""

from __future__ import annotations

from .checks import *
from .environment import *
from .options import *
from .secret import *
from .signatures import *
