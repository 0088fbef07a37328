"""docs/operators.md says what the operators do: every Python block runs, in order, against the simulator
(the README's convention: ``<!-- readme-test: skip (reason) -->`` before a block leaves it out)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

from polars_llm import sim
from test_readme import BLOCK  # the README test's block pattern (tests/ is on sys.path)

PAGE = Path(__file__).resolve().parents[1] / "docs" / "operators.md"


def test_every_python_block_of_the_operators_page_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    text = PAGE.read_text()
    found = [
        (text.count("\n", 0, m.start("code")) + 1, m["code"]) for m in BLOCK.finditer(text) if not m["marker"]
    ]
    assert len(found) >= 7
    ns: dict[str, Any] = {}
    with sim.serve() as server, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the page shows one warning on purpose
        monkeypatch.setenv("POLARS_LLM_BASE_URL", str(server))
        monkeypatch.setenv("OPENROUTER_API_KEY", "sk-docs-test")
        monkeypatch.setenv("MODEL", "sim/docs")
        for line, code in found:
            exec(compile(code, f"docs/operators.md:{line}", "exec"), ns)
        assert server.stats(per_prompt=False)["requests"] > 0
