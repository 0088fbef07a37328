"""Rewrite the README's generated sections from the code: ``uv run python scripts/sync_readme.py``.

Sections sit between ``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``:

* ``options`` — every option of ``MapConfig`` with its default and description;
* ``store`` — the cache's tables (``polars_llm._store.store.TABLES_DOC``).

``tests/test_readme.py`` fails when a section differs from what this script would write.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def sections() -> dict[str, str]:
    from polars_llm._config.options import options_listing
    from polars_llm._store.store import TABLES_DOC

    return {"options": f"```python\n{options_listing()}\n```", "store": TABLES_DOC.rstrip("\n")}


def render(text: str) -> str:
    for name, body in sections().items():
        pattern = re.compile(
            rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- /generated:{name} -->)", re.DOTALL
        )
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- generated:{name} --> section")
        text = pattern.sub(lambda m, body=body: m[1] + body + "\n" + m[2], text)
    return text


def main() -> int:
    old = README.read_text()
    new = render(old)
    if new != old:
        README.write_text(new)
        print("README.md: generated sections updated")
    else:
        print("README.md: up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
