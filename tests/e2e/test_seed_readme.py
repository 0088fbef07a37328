"""Every code example of the seed's README (``llm_batch_runner``) runs unchanged against the simulator, the
import line excepted.

The snippets below are the README's text verbatim (indentation restored); only the two import lines
are rewritten, by :func:`migrate`, exactly as a user would. They run in one namespace, in README order,
the way a reader pastes them into a notebook: snippets with a top-level ``await`` are compiled with
``PyCF_ALLOW_TOP_LEVEL_AWAIT`` and run on a fresh event loop. Model and key come from the README's
``.env``; ``POLARS_LLM_BASE_URL`` points the client at the simulator instead of OpenRouter.
"""

from __future__ import annotations

import ast
import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from polars_llm import sim

DOTENV = """\
# .env
MODEL=openai/gpt-4o-mini
OPENROUTER_API_KEY=sk-or-...
"""

QUICKSTART = """\
import asyncio
from llm_batch_runner.main import prompt_map

prompts = [
    "Summarize: The quick brown fox jumps over the lazy dog.",
    "Give me 3 bullet points on why the sky appears blue.",
    "Rewrite this in pirate speak: Hello, friend!",
]

async def main():
    results = await prompt_map(prompts, concurrency=16, teardown=True)
    for row in results:
        print(row)

asyncio.run(main())
"""

DIRECT_PARAMS = """\
results = await prompt_map(
    prompts,
    model_name="openai/gpt-4o-mini",
    openrouter_api_key="sk-or-...",
)
"""

CUSTOM_WORKER = """\
async def echo_worker(p: str) -> str:
    return p.upper()

results = await prompt_map(prompts, worker=echo_worker)
"""

STRUCTURED = """\
from pydantic import BaseModel

class Bullets(BaseModel):
    points: list[str]

results = await prompt_map(
    prompts,
    model_name="openai/gpt-4o-mini",
    openrouter_api_key="sk-or-...",
    response_model=Bullets,
)
# each row["result"] is a JSON string for Bullets
"""

OUTPUT_SHAPE = """\
results_orig = await prompt_map(prompts, output_shape="original")  # default
results_unique = await prompt_map(prompts, output_shape="unique")
"""

EXPORT = """\
from llm_batch_runner.utils import export_jsonl, DB_URL_DEFAULT
import asyncio

asyncio.run(export_jsonl(DB_URL_DEFAULT, out="results.jsonl"))
"""

THROUGHPUT = """\
results = await prompt_map(
    prompts,
    # Ensure your provider/model is set, e.g. via .env:
    # MODEL=google/gemini-flash-2.5-latest
    concurrency=128,  # adjust based on observed latency
    rpm_limit=3900,   # slight headroom under 4000
    teardown=True,
)
"""

MODEL = "openai/gpt-4o-mini"
PROMPTS = [
    "Summarize: The quick brown fox jumps over the lazy dog.",
    "Give me 3 bullet points on why the sky appears blue.",
    "Rewrite this in pirate speak: Hello, friend!",
]
_IMPORTS = {
    "from llm_batch_runner.main import prompt_map": "from polars_llm import prompt_map",
    "from llm_batch_runner.utils import export_jsonl, DB_URL_DEFAULT": (
        "from polars_llm import export_jsonl, DB_URL_DEFAULT"
    ),
}


def migrate(snippet: str) -> str:
    """The one change a user makes: the import line."""
    for old, new in _IMPORTS.items():
        snippet = snippet.replace(old, new)
    assert "llm_batch_runner" not in snippet
    return snippet


def run_snippet(snippet: str, namespace: dict[str, Any]) -> None:
    code = compile(migrate(snippet), "<seed README>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(code, namespace)
    if asyncio.iscoroutine(result):
        asyncio.run(result)


@pytest.fixture(scope="module")
def server() -> Iterator[sim.SimServer]:
    with sim.serve() as s:
        yield s


@pytest.fixture
def readme_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: sim.SimServer) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("MODEL", "OPENROUTER_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("POLARS_LLM_BASE_URL", server)
    (tmp_path / ".env").write_text(DOTENV)
    server.reset()
    return tmp_path


def test_every_readme_example_runs_against_the_simulator(
    readme_env: Path, server: sim.SimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    ns: dict[str, Any] = {"__name__": "__readme__"}
    expected = [sim.expected_text(MODEL, p) for p in PROMPTS]
    cache_dir = readme_env / ".llm_batch_cache"

    run_snippet(QUICKSTART, ns)
    printed = capsys.readouterr().out
    for prompt, answer in zip(PROMPTS, expected, strict=True):
        assert repr({"prompt": prompt}).strip("{}") in printed
        assert repr(answer) in printed
    assert [p.name for p in cache_dir.iterdir()] == ["runs-results.duckdb"]  # teardown=True
    assert server.stats()["ok"] == 3

    run_snippet(DIRECT_PARAMS, ns)
    assert [r["result"] for r in ns["results"]] == expected

    run_snippet(CUSTOM_WORKER, ns)
    assert [r["result"] for r in ns["results"]] == [p.upper() for p in PROMPTS]

    run_snippet(STRUCTURED, ns)
    bullets = ns["Bullets"]
    rows = ns["results"]
    assert [r["status"] for r in rows] == ["done"] * 3
    assert all(isinstance(bullets.model_validate_json(r["result"]).points, list) for r in rows)

    run_snippet(OUTPUT_SHAPE, ns)
    assert [r["result"] for r in ns["results_orig"]] == expected
    assert [(r["idx"], r["result"]) for r in ns["results_unique"]] == list(enumerate(expected))

    run_snippet(EXPORT, ns)
    exported = [json.loads(line) for line in (readme_env / "results.jsonl").read_text().splitlines()]
    assert [(r["idx"], r["prompt"], r["result"]) for r in exported] == list(
        zip(range(3), PROMPTS, expected, strict=True)
    )

    run_snippet(THROUGHPUT, ns)
    assert [r["result"] for r in ns["results"]] == expected
    assert not (cache_dir / "runs.duckdb").exists()


def test_snippets_keep_the_seed_imports_and_api() -> None:
    """Guard against drifting from the README: the snippets still use the seed's imports and calls."""
    assert "from llm_batch_runner.main import prompt_map" in QUICKSTART
    assert "from llm_batch_runner.utils import export_jsonl, DB_URL_DEFAULT" in EXPORT
    for snippet in (DIRECT_PARAMS, CUSTOM_WORKER, STRUCTURED, OUTPUT_SHAPE, THROUGHPUT):
        assert "await prompt_map(" in snippet
        compile(snippet, "<seed README>", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
