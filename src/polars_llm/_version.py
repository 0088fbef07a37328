"""The installed version, from the package metadata (``pyproject.toml``'s ``version`` is the one source).

>>> version() == __import__("polars_llm").__version__
True
"""

from __future__ import annotations

import importlib.metadata

__all__ = ["DISTRIBUTION", "version"]

DISTRIBUTION = "polars-llm-map"


def version() -> str:
    """``polars-llm-map``'s version, or ``"0+unknown"`` when run from a source tree that is not installed."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
