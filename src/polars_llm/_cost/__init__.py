"""Money: prices, estimates and the spending budget.

Other parts import from this package only: its names are those its modules declare in ``__all__``.
"""

from __future__ import annotations

from .budget import *
from .pricing import *
