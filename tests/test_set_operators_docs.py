"""docs/set-operators.md says what the code does: its Python blocks run, in order, against the simulator
(each block asserts what it shows). A block preceded by ``<!-- readme-test: skip (reason) -->`` is not run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parents[1] / "docs" / "set-operators.md"
BLOCK = re.compile(r"(?P<skip><!-- readme-test: skip[^>]*-->\n)?```python\n(?P<code>.*?)```", re.DOTALL)


def test_set_operators_page_runs(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    text = DOC.read_text()
    ns: dict[str, Any] = {}
    ran = 0
    for m in BLOCK.finditer(text):
        if m["skip"]:
            continue
        line = text.count("\n", 0, m.start("code")) + 1
        exec(compile(m["code"], f"docs/set-operators.md:{line}", "exec"), ns)
        ran += 1
    assert ran >= 6
