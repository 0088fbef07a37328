"""The DuckDB job store: its tables, jobs, files and locking, migrations, the batches table.

Other parts import from this package only: its names are those its modules declare in ``__all__``.
"""

from __future__ import annotations

from .batches import *
from .jobs import *
from .journal import *
from .locking import *
from .migrations import *
from .outcomes import *
from .store import *
from .tables import *
