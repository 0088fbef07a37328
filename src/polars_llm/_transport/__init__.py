"""How requests travel: the transports, error mapping, rate-limit headers.

Other parts import from this package only: its names are those its modules declare in ``__all__``.
"""

from __future__ import annotations

from .answer import *
from .client import *
from .failures import *
from .limit_headers import *
from .retry import *
