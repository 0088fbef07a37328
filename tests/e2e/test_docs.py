"""The README and the docs pages say what the code does: generated sections current, code blocks run,
the API reference complete.

Every ```` ```python ```` block of ``README.md`` and of each ``docs/*.md`` page runs, in page order and in
one namespace per page, against the simulator: the environment points ``POLARS_LLM_BASE_URL``, ``MODEL``
and ``OPENROUTER_API_KEY`` at it, in a fresh working directory (so the default cache lands there). A block
preceded by ``<!-- readme-test: skip (reason) -->`` is not run, and the reason is required (a listing, a
block that needs a real provider, a cluster or your files). Blocks in other languages are shell commands
(``bash``, covered by the CLI tests) or printed output (``text``, ``pycon``); a fence without a language
fails.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import importlib.util
import inspect
import re
import subprocess
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import polars_llm
from polars_llm import MapConfig, sim

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
SKIP = re.compile(r"<!-- readme-test: skip \((?P<reason>[^)]+)\) -->")
BLOCK = re.compile(
    r"(?P<marker><!-- readme-test: skip[^>]*-->\n(?:<!--[^>]*-->\n)*)?```python\n(?P<code>.*?)```", re.DOTALL
)
FENCE = re.compile(r"^```(?P<lang>\S*)", re.MULTILINE)
KINDS = {"python", "bash", "text", "pycon"}


def _sync() -> Any:
    spec = importlib.util.spec_from_file_location("sync_readme", ROOT / "scripts" / "sync_readme.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _name(page: Path) -> str:
    return str(page.relative_to(ROOT))


def test_generated_sections_are_current_and_each_in_one_page() -> None:
    sync = _sync()
    for page in PAGES:
        text = page.read_text()
        assert sync.render(text) == text, f"{_name(page)}: run `uv run python scripts/sync_readme.py`"
    for name, found in sync.holders().items():
        assert len(found) == 1, (name, found)


def blocks(page: Path) -> list[tuple[int, str, bool]]:
    text = page.read_text()
    return [
        (text.count("\n", 0, m.start("code")) + 1, m["code"], m["marker"] is not None)
        for m in BLOCK.finditer(text)
    ]


def test_every_block_is_python_that_compiles_or_says_why_it_is_not_run() -> None:
    runnable = 0
    for page in PAGES:
        text = page.read_text()
        opening = [m for i, m in enumerate(FENCE.finditer(text)) if i % 2 == 0]
        for m in opening:
            line = text.count("\n", 0, m.start()) + 1
            assert m["lang"] in KINDS, f"{_name(page)}:{line}: a fence without a known language"
        for marker in re.finditer(r"<!-- readme-test: skip[^>]*-->", text):
            assert SKIP.fullmatch(marker[0]), f"{_name(page)}: a skip marker without its (reason)"
        for line, code, skipped in blocks(page):
            if not skipped:  # top-level await allowed, as in Jupyter
                compile(code, f"{_name(page)}:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                runnable += 1
    assert runnable >= 25


def _prelude() -> dict[str, Any]:
    reviews = ["Great kettle, arrived late.", "Broke after two days.", "Great kettle, arrived late."]

    async def my_async_worker(prompt: str) -> str:
        return prompt.upper()

    df = pl.DataFrame({"prompt": ["Say hi", "Say bye", "Say hi"], "review": reviews})
    return {
        "pl": pl,
        "polars_llm": polars_llm,
        "df": df,
        "lf": df.lazy(),
        "series": df["prompt"],
        "prompts": ["one", "two", "one"],
        "my_async_worker": my_async_worker,
    }


@pytest.mark.parametrize("page", [p for p in PAGES if any(not s for _, _, s in blocks(p))], ids=_name)
def test_every_python_block_runs_against_the_simulator(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    ns: dict[str, Any] = {}
    with sim.serve() as server:
        monkeypatch.setenv("POLARS_LLM_BASE_URL", str(server))
        monkeypatch.setenv("OPENROUTER_API_KEY", "sk-readme-test")
        monkeypatch.setenv("MODEL", "sim/readme")
        for line, code, skipped in blocks(page):
            if skipped:
                continue
            ns.update(_prelude())  # each block starts from the same example frames
            compiled = compile(
                code, f"{_name(page)}:{line}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True
            )
            result = eval(compiled, ns)
            if inspect.iscoroutine(result):
                asyncio.run(result)


def test_the_readme_is_short_and_holds_the_two_set_up_commands() -> None:
    text = README.read_text()
    assert len(text.splitlines()) < 250
    assert "uv run polars-llm demo" in text and "uv run pytest" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nuv run pytest\n" in ci, "CI runs the README's test command"


def test_the_api_reference_documents_every_public_name() -> None:
    api = (DOCS / "api.md").read_text()
    documented = re.findall(r"^::: polars_llm\.(\w+)$", api, re.MULTILINE)
    public = [name for name in polars_llm.__all__ if name != "__version__"]
    assert sorted(set(documented) & set(public)) == sorted(public), "docs/api.md misses public names"
    assert len(documented) == len(set(documented)), "a name documented twice"
    stray = set(documented) - set(public) - {"sim", "ray"}
    assert not stray, f"docs/api.md documents names outside __all__: {stray}"
    for name in public:  # each has its own docstring (constants are described in their module's)
        obj = getattr(polars_llm, name)
        if callable(obj):
            assert inspect.getdoc(obj), f"polars_llm.{name} has no docstring"


def test_the_options_page_documents_every_mapconfig_field() -> None:
    page = (DOCS / "options.md").read_text()
    for f in dataclasses.fields(MapConfig):
        assert re.search(rf"^\s+{f.name}=.*# \S", page, re.MULTILINE), (
            f"{f.name} missing from docs/options.md"
        )
    assert "MapConfig" in (DOCS / "api.md").read_text()


def test_every_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in sorted(DOCS.glob("*.md")):
        assert f": {page.name}" in nav, f"{page.name} is not in mkdocs.yml's nav"


def test_the_docs_extension_fences_doctests() -> None:
    spec = importlib.util.spec_from_file_location("griffe_doctests", ROOT / "scripts" / "griffe_doctests.py")
    if importlib.util.find_spec("griffe") is None:
        pytest.skip("griffe comes with the docs group (`uv sync --group docs`)")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.fence_doctests('Text.\n\n>>> x["a"][0]\n1\n\nMore.')
    assert out == 'Text.\n\n```pycon\n>>> x["a"][0]\n1\n```\n\nMore.'


def test_docs_sources_stay_out_of_the_wheel() -> None:
    """The docs, the scripts and the changelog are not package data (the wheel holds src/polars_llm)."""
    listed = subprocess.run(["git", "ls-files", "src"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert not [f for f in listed.stdout.split() if f.endswith(".md")]
