"""Rate control: the pacer, its learner, the user's token buckets, retry delays.

Other parts import from this package only: its names are those its modules declare in ``__all__``.
"""

from __future__ import annotations

from .buckets import *
from .learner import *
from .pacer import *
