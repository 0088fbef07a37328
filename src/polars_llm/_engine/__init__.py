"""The online mode: run loop, writer, session; ``pace/`` holds rate control.

Other parts import from this package only: its names are those its modules declare in ``__all__``.
"""

from __future__ import annotations

from .groups import *
from .pace import *
from .pack import *
from .run import *
from .session import *
