"""What is sent: the request spec, inputs, keys, structured output and its result column, templates.

Other parts import from this package only: its names are those its modules declare in ``__all__``.
"""

from __future__ import annotations

from .inputs import *
from .keys import *
from .result_column import *
from .spec import *
from .structured import *
from .template import *
