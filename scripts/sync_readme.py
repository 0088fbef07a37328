"""Rewrite the generated sections of the README and the docs pages from the code:
``uv run python scripts/sync_readme.py``.

Sections sit between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``, in whichever of
``README.md`` and ``docs/*.md`` holds them (each section in exactly one file):

* ``options`` — every option of ``MapConfig`` with its default and description (``docs/options.md``);
* ``store`` — the cache's tables (``polars_llm._store.tables.TABLES_DOC``; ``docs/store.md``).

``tests/test_docs.py`` fails when a section differs from what this script would write, or is missing.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def pages() -> list[Path]:
    """The README and every docs page, in a stable order."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]


def sections() -> dict[str, str]:
    from polars_llm._config import options_listing
    from polars_llm._store.tables import TABLES_DOC

    return {"options": f"```python\n{options_listing()}\n```", "store": TABLES_DOC.rstrip("\n")}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- /generated:{name} -->)", re.DOTALL)


def holders() -> dict[str, list[Path]]:
    """For each section, the pages that hold it."""
    return {name: [p for p in pages() if _pattern(name).search(p.read_text())] for name in sections()}


def render(text: str) -> str:
    """``text`` with every generated section it holds written afresh."""
    for name, body in sections().items():
        text = _pattern(name).sub(lambda m, body=body: m[1] + body + "\n" + m[2], text)
    return text


def main() -> int:
    for name, found in holders().items():
        if len(found) != 1:
            raise SystemExit(f"<!-- generated:{name} --> should be in one page, found in {found or 'none'}")
    for page in pages():
        old = page.read_text()
        new = render(old)
        if new != old:
            page.write_text(new)
            print(f"{page.relative_to(ROOT)}: generated sections updated")
    print("generated sections: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
