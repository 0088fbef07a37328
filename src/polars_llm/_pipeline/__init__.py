"""The entry points: typed free functions, the ``llm`` namespace, streaming, embeddings.

Other parts import from this package only: its names are those its modules declare in ``__all__``.
"""

from __future__ import annotations

from .embed import *
from .functions import *
from .modes import *
from .pipeline import *
from .prepared import *
from .stream import *
