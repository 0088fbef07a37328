"""Shared fixtures: simulators on 127.0.0.1 (one per test, or one per module) and a cache path.

Keep this file small and general; test-specific helpers live next to their tests
(e.g. ``reliability_utils.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from polars_llm import sim


@pytest.fixture
def sim_server() -> Iterator[sim.SimServer]:
    """A fresh zero-latency simulator for one test (``sim_server`` is its base URL)."""
    with sim.serve() as server:
        yield server


@pytest.fixture(scope="module")
def module_sim() -> Iterator[sim.SimServer]:
    """One simulator shared by a module's tests (call ``.reset()`` / ``.configure()`` as needed)."""
    with sim.serve() as server:
        yield server


@pytest.fixture
def cache_path(tmp_path: Path) -> Path:
    """A DuckDB cache file path in the test's temporary directory (not created yet)."""
    return tmp_path / "cache.duckdb"
