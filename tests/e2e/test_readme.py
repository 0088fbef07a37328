"""The README says what the code does: its generated sections are current and its Python blocks run.

Every ```` ```python ```` block runs, in README order and in one namespace, against the simulator: the
environment points ``POLARS_LLM_BASE_URL``, ``MODEL`` and ``OPENROUTER_API_KEY`` at it, in a fresh working
directory (so the default cache lands there). A block preceded by ``<!-- readme-test: skip (reason) -->``
is not run (a listing, or a block that needs a real provider).
"""

from __future__ import annotations

import ast
import asyncio
import importlib.util
import inspect
import os
import re
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from polars_llm import sim

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BLOCK = re.compile(
    r"(?P<marker><!-- readme-test: skip[^>]*-->\n(?:<!--[^>]*-->\n)*)?```python\n(?P<code>.*?)```", re.DOTALL
)


def _sync_readme() -> Any:
    spec = importlib.util.spec_from_file_location("sync_readme", ROOT / "scripts" / "sync_readme.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_sections_are_current() -> None:
    text = README.read_text()
    assert _sync_readme().render(text) == text, "run `uv run python scripts/sync_readme.py`"


def blocks() -> list[tuple[int, str, bool]]:
    text = README.read_text()
    return [
        (text.count("\n", 0, m.start("code")) + 1, m["code"], m["marker"] is not None)
        for m in BLOCK.finditer(text)
    ]


def test_readme_has_python_blocks_and_marks_the_skipped_ones() -> None:
    found = blocks()
    assert len([b for b in found if not b[2]]) >= 8
    for line, code, skipped in found:
        if not skipped:  # every block that is run is valid Python (top-level await allowed, as in Jupyter)
            compile(code, f"README.md:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def _prelude() -> dict[str, Any]:
    reviews = ["Great kettle, arrived late.", "Broke after two days.", "Great kettle, arrived late."]

    async def my_async_worker(prompt: str) -> str:
        return prompt.upper()

    df = pl.DataFrame({"prompt": ["Say hi", "Say bye", "Say hi"], "review": reviews})
    return {
        "pl": pl,
        "df": df,
        "lf": df.lazy(),
        "series": df["prompt"],
        "prompts": ["one", "two", "one"],
        "my_async_worker": my_async_worker,
    }


def test_every_python_block_runs_against_the_simulator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ns: dict[str, Any] = {}
    ran = 0
    with sim.serve() as server:
        monkeypatch.setenv("POLARS_LLM_BASE_URL", str(server))
        monkeypatch.setenv("OPENROUTER_API_KEY", "sk-readme-test")
        monkeypatch.setenv("MODEL", "sim/readme")
        for line, code, skipped in blocks():
            if skipped:
                continue
            ns.update(_prelude())  # each block starts from the same example frames
            compiled = compile(
                code, f"README.md:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
            )
            result = eval(compiled, ns)
            if inspect.iscoroutine(result):
                asyncio.run(result)
            ran += 1
        assert server.stats(per_prompt=False)["requests"] > 0
    assert ran >= 8
    assert os.path.exists(tmp_path / ".polars_llm" / "cache.duckdb")
