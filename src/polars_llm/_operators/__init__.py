"""Operators over a column: row operators (``classify``, ``filter``, ``extract``) and the set operators
(``reduce``, ``join``, ``top_k``, ``dedup``) built on them, above the pipeline they run on. Each module
holds one noun; the public names are exported by ``polars_llm``.

Other parts import from this package only: its names are those its modules declare in ``__all__``.
"""

from __future__ import annotations

from .classify import *
from .dedup import *
from .estimate import *
from .extract import *
from .filter import *
from .join import *
from .reduce import *
from .settings import *
from .task import *
from .topk import *
