"""The package keeps the shape ARCHITECTURE.md draws: few modules at the top, parts used through their
``__init__``, and the import contract of ``pyproject.toml`` (layers, no circles) kept."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "polars_llm"


def _module(path: Path) -> tuple[str, bool]:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _parts() -> list[str]:
    """Every subpackage (a part, or a part inside one: ``_engine.pace``)."""
    return sorted(_module(init)[0] for init in PACKAGE.rglob("__init__.py") if init.parent != PACKAGE)


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every import in ``path``, at any depth (function-level too)."""
    module, is_package = _module(path)
    here = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def test_at_most_twelve_modules_at_the_top_of_the_package() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top


def test_another_part_is_imported_through_its_init_only() -> None:
    parts = _parts()
    reaching = []
    for path in PACKAGE.rglob("*.py"):
        importer = _module(path)[0]
        for line, target in _imports(path):
            if not target.startswith("polars_llm."):
                continue
            # the outermost part of the target that the importer stands outside of must be named whole
            for part in sorted((p for p in parts if target.startswith(p + ".")), key=len):
                if not (importer == part or importer.startswith(part + ".")):
                    reaching.append(f"{path.relative_to(ROOT)}:{line} imports {target}, inside {part}")
                    break
    assert not reaching, "\n".join(reaching)


def test_the_import_contract_is_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "BROKEN" not in done.stdout
