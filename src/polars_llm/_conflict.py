"""The other ``polars-llm`` project: told apart at import time instead of silently sharing a namespace.

This library is distributed as ``polars-llm-map``. An unrelated, older distribution called ``polars-llm``
also installs a ``polars_llm`` package and registers an ``llm`` namespace on Polars. Both cannot live in
one environment: they write the same ``polars_llm/__init__.py``, so the one installed last owns
``import polars_llm``, and uninstalling either breaks the other. :func:`conflicts` names what it finds;
importing :mod:`polars_llm` turns each finding into a :class:`NamespaceConflictWarning`.

>>> conflicts(distribution=lambda name: None, registered=lambda: None)
[]
>>> conflicts(distribution=lambda name: "0.4.0", registered=lambda: None)[0].split(":")[0]
"the distribution 'polars-llm' 0.4.0 (another project) is installed too"
"""

from __future__ import annotations

import importlib.metadata
import warnings
from collections.abc import Callable

import polars as pl

__all__ = ["OTHER_DISTRIBUTION", "NamespaceConflictWarning", "conflicts", "warn_conflicts"]

OTHER_DISTRIBUTION = "polars-llm"
_FIX = "pip uninstall polars-llm polars-llm-map && pip install polars-llm-map"


class NamespaceConflictWarning(UserWarning):
    """Another project's ``llm`` namespace or ``polars_llm`` package shares this environment."""


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _foreign_namespace() -> str | None:
    """The module of an ``llm`` namespace on ``pl.Expr`` that is not this package's, else None."""
    owner = getattr(pl.Expr, "llm", None)
    module = getattr(owner, "__module__", "") or ""
    if owner is None or module.startswith("polars_llm._") or module.startswith("polars_llm.namespace"):
        return None
    return module or repr(owner)


def conflicts(
    *,
    distribution: Callable[[str], str | None] = _installed,
    registered: Callable[[], str | None] = _foreign_namespace,
) -> list[str]:
    """What shares this environment with polars-llm-map: each finding as a sentence with its fix."""
    found = []
    version = distribution(OTHER_DISTRIBUTION)
    if version is not None:
        found.append(
            f"the distribution {OTHER_DISTRIBUTION!r} {version} (another project) is installed too: "
            "it writes the same `polars_llm` package, so whichever was installed last owns "
            "`import polars_llm`. "
            f"Keep one: {_FIX}"
        )
    module = registered()
    if module is not None:
        found.append(
            f"an `llm` namespace from {module!r} was registered on Polars before polars_llm's; "
            "polars_llm's replaces it in this process (`pl.col(...).llm` is polars_llm's from here on)"
        )
    return found


def warn_conflicts() -> None:
    """Warn once per finding (called by ``import polars_llm`` before it registers its namespaces)."""
    for finding in conflicts():
        warnings.warn(f"polars_llm: {finding}", NamespaceConflictWarning, stacklevel=3)
