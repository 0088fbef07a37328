"""``python -m polars_llm.sim --port 8000 --latency 0.1``: print the base URL, serve until Ctrl-C."""

from __future__ import annotations

import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
