"""Every example notebook executes in a real kernel (nbclient), and the committed copies are current.

The notebooks are built from the cell sources in ``scripts/run_notebooks.py`` and executed exactly as
the script does when it regenerates them (including the real kernel interrupt in ``resume.ipynb``), in
a scratch working directory so no cache lands in the repository.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

pytestmark = pytest.mark.timeout(180)


def _load_script() -> ModuleType:
    path = ROOT / "scripts" / "run_notebooks.py"
    spec = importlib.util.spec_from_file_location("run_notebooks", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("run_notebooks", module)
    spec.loader.exec_module(module)
    return module


run_notebooks = _load_script()
NAMES = list(run_notebooks.NOTEBOOKS)


def text_of(cell: nbformat.NotebookNode) -> str:
    """All text a code cell shows: streams, plain-text results, error names and messages."""
    parts = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type == "error":
            parts.append(f"{output.ename}: {output.evalue}")
        else:
            parts.append(output.get("data", {}).get("text/plain", ""))
    return ANSI.sub("", "\n".join(parts))


def cell_with(nb: nbformat.NotebookNode, source_part: str) -> nbformat.NotebookNode:
    matches = [c for c in nb.cells if c.cell_type == "code" and source_part in c.source]
    assert matches, f"no code cell contains {source_part!r}"
    return matches[0]


def has_widget(cell: nbformat.NotebookNode) -> bool:
    return any(WIDGET_VIEW in o.get("data", {}) for o in cell.get("outputs", []))


@pytest.fixture(scope="module", params=NAMES)
def executed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object]:
    name = request.param
    nb = run_notebooks.run(name, tmp_path_factory.mktemp(name))  # raises on any unexpected cell error
    return name, nb


def test_notebook_executes(executed: tuple[str, nbformat.NotebookNode]) -> None:
    name, nb = executed
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "a cell was not executed"
    maps = [c for c in code if ".llm.map(" in c.source or ".llm.amap(" in c.source]
    assert maps and all(has_widget(c) for c in maps), "every map shows a progress widget"
    if name == "quickstart":
        assert "requests sent by the re-run: 1" in text_of(cell_with(nb, "before = server.stats()"))
        assert text_of(cell_with(nb, "awaited = await")).strip().endswith("True")
        assert "done=300 failed=1" in text_of(cell_with(nb, "out = reviews.llm.map"))
    elif name == "structured_extraction":
        labels = "Enum(categories=['billing', 'bug', 'feature', 'other'])"  # a Literal of labels is an Enum
        assert f"Struct({{'category': {labels}, 'urgency': Int64" in text_of(cell_with(nb, "out.schema"))
        assert "output_validation" in text_of(cell_with(nb, "error_kind, error FROM requests"))
    elif name == "resume":
        interrupted = next(c for c in code if "raises-exception" in c.metadata.get("tags", []))
        rerun = next(c for c in code[code.index(interrupted) + 1 :] if c.source == interrupted.source)
        errors = [o for o in interrupted.outputs if o.output_type == "error"]
        assert [e.ename for e in errors] == ["KeyboardInterrupt"]
        assert "(stopped)" in text_of(interrupted)
        assert "cached)" in text_of(rerun)
        summary = text_of(cell_with(nb, "sent twice"))
        twice = int(re.search(r"sent twice \(in flight when interrupted\): (\d+)", summary)[1])  # type: ignore[index]
        assert 0 <= twice <= 8  # concurrency=8: only what was in flight is paid twice
        assert "done   ┆ 2000" in summary


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_matches_its_sources(name: str) -> None:
    """``notebooks/*.ipynb`` are regenerated whenever the cell sources change, and carry outputs."""
    committed = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    expected = run_notebooks.build(run_notebooks.NOTEBOOKS[name])
    assert [(c.cell_type, c.source) for c in committed.cells] == [
        (c.cell_type, c.source) for c in expected.cells
    ], f"notebooks/{name}.ipynb is stale: run `uv run python scripts/run_notebooks.py {name}`"
    code = [c for c in committed.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert any(c.outputs for c in code)
    assert str(ROOT) not in nbformat.writes(committed), "machine-specific paths in the outputs"
