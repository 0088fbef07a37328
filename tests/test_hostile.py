"""Every provider answer gives a clear outcome, on both transports.

Each case maps three prompts — one carrying a hostile marker of the simulator, two clean ones — through
``DataFrame.llm.map`` into a real DuckDB file, and checks the outcome the issue asks for: ``done`` with
the right text, a retried transient error, a ``failed`` row with a readable error, or a fatal error —
never an unrelated exception, a hang, a lost answer or a wrong ``done``; and the clean rows are done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

import polars_llm  # noqa: F401  (registers .llm)
from polars_llm import exceptions as exc
from polars_llm import sim
from polars_llm._transport.client import MAX_RESPONSE_BYTES
from polars_llm.sim._hostile import REFUSAL
from reliability_utils import MODEL, map_options, store_rows

TRANSPORTS = ["aiohttp", "openai"]


class Answer(BaseModel):
    label: str
    score: int


def _run(server: str, cache: Path, hostile: str, **options: Any) -> tuple[pl.DataFrame, pl.DataFrame]:
    frame = pl.DataFrame({"prompt": ["clean one", hostile, "clean two"]})
    out = frame.llm.map("prompt", MODEL, **map_options(server, cache=cache, **options))
    return out, store_rows(cache)


def _row(rows: pl.DataFrame, prompt: str) -> dict[str, Any]:
    return rows.filter(pl.col("prompt") == prompt).to_dicts()[0]


def _clean_done(out: pl.DataFrame) -> None:
    clean = out.filter(pl.col("prompt").str.starts_with("clean"))
    assert clean["status"].to_list() == ["done", "done"]
    assert clean["result"].to_list() == [sim.expected_text(MODEL, p) for p in clean["prompt"]]


# (marker, options, status, error_kind or None, text the error must contain, attempts)
ROW_CASES = [
    ("[[content_parts]]", {}, "done", None, None, 1),
    ("[[usage_string]]", {}, "done", None, None, 1),
    ("[[usage_negative]]", {}, "done", None, None, 1),
    ("[[content_number]]", {}, "failed", "unusable_answer", "int 42", 1),
    ("[[content_object]]", {}, "failed", "unusable_answer", "dict", 1),
    ("[[content_image]]", {}, "failed", "unusable_answer", "image_url", 1),
    ("[[refusal]]", {}, "failed", "refusal", REFUSAL, 1),
    ("[[html:1]]", {}, "done", None, None, 2),
    ("[[empty_body:1]]", {}, "done", None, None, 2),
    ("[[choices_null:1]]", {}, "done", None, None, 2),
    ("[[message_null:1]]", {}, "done", None, None, 2),
    ("[[error200:1]]", {}, "done", None, None, 2),
    ("[[short_body:1]]", {}, "done", None, None, 2),
    ("[[stall_body:1]]", {"timeout": 0.5}, "done", None, None, 2),
    ("[[stall:1]]", {"timeout": 0.5}, "done", None, None, 2),
    ("[[huge]]", {}, "failed", "unusable_answer", "response-size limit", 1),
    ("[[huge_chunked]]", {}, "failed", "unusable_answer", "response-size limit", 1),
    ("[[retry_after:soon]]", {}, "done", None, None, 2),
    ("[[retry_after:-5]]", {}, "done", None, None, 2),
    ("[[retry_after_ms:nan]]", {}, "done", None, None, 2),
    ("[[credits_wait:1]]", {}, "done", None, None, 2),
    ("[[html_error:502:1]]", {}, "done", None, None, 2),
    ("[[html_error:503]]", {"max_attempts": 2}, "failed", "server_error", "503 Bad Gateway", 2),
    ("[[status:413]]", {}, "failed", "bad_request", "too large", 1),
]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("marker", "options", "status", "kind", "says", "attempts"), ROW_CASES, ids=[c[0] for c in ROW_CASES]
)
def test_row_outcomes(
    transport: str,
    marker: str,
    options: dict[str, Any],
    status: str,
    kind: str | None,
    says: str | None,
    attempts: int,
    cache_path: Path,
) -> None:
    hostile = f"hostile {marker}"
    with sim.serve(stall_seconds=30.0) as server:
        out, rows = _run(server, cache_path, hostile, transport=transport, **options)
        stats = server.stats()
    _clean_done(out)
    row = _row(rows, hostile)
    assert (row["status"], row["error_kind"]) == (status, kind), row["error"]
    assert out.filter(pl.col("prompt") == hostile)["status"].item() == status
    assert row["attempts"] == attempts == stats["per_prompt"][hostile]
    if status == "done":
        assert row["result"] == sim.expected_text(MODEL, hostile) and row["error"] is None
    else:
        assert row["result"] is None and says is not None and says in row["error"]
    if marker == "[[usage_string]]":
        assert row["tokens_in"] > 0 and row["tokens_out"] > 0 and row["cost"] > 0
    if marker == "[[usage_negative]]":
        assert row["tokens_in"] is None and row["tokens_out"] is None and row["cost"] is None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_length_with_whole_json_is_done_and_cut_json_is_truncated(transport: str, cache_path: Path) -> None:
    prompts = ["whole [[length_valid]]", "cut [[length]]", "fine"]
    with sim.serve() as server:
        frame = pl.DataFrame({"prompt": prompts})
        out = frame.llm.map(
            "prompt",
            MODEL,
            **map_options(server, cache=cache_path, response_model=Answer, transport=transport),
        )
    assert out["status"].to_list() == ["done", "failed", "done"]
    rows = store_rows(cache_path)
    assert _row(rows, "cut [[length]]")["error_kind"] == "output_truncated"
    whole = _row(rows, "whole [[length_valid]]")
    assert whole["attempts"] == 1 and set(json.loads(whole["result"])) == {"label", "score"}


# -------------------------------------------------------------------------------------------- fatal


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("hint", ["inf", "100000000"])
def test_endless_retry_hint_stops_with_provider_wait_error_and_a_rerun_resumes(
    transport: str, hint: str, cache_path: Path
) -> None:
    hostile = f"hostile [[retry_after:{hint}:1]]"
    frame = pl.DataFrame({"prompt": ["clean a", hostile, "clean b"]})
    options = map_options("", cache=cache_path, transport=transport, concurrency=1)
    with sim.serve() as server:
        options["base_url"] = server
        with pytest.raises(exc.ProviderWaitError) as info:
            frame.llm.map("prompt", MODEL, **options)
        err = info.value
        assert isinstance(err, exc.FatalError) and err.max_wait == 900.0
        assert f"Retry-After: {hint}" in str(err) and "max_wait" in str(err) and "resume" in str(err)
        rows = store_rows(cache_path)
        assert _row(rows, "clean a")["status"] == "done"  # what finished was kept
        assert _row(rows, hostile)["attempts"] == 1
        before = server.stats()["per_prompt"]
        out = frame.llm.map("prompt", MODEL, **options)  # the hint was for one attempt: a rerun finishes
        after = server.stats()["per_prompt"]
    assert out["status"].to_list() == ["done"] * 3
    assert after["clean a"] == before["clean a"] == 1  # not paid twice
    assert _row(store_rows(cache_path), hostile)["attempts"] == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_max_wait_bounds_a_finite_hint(transport: str, cache_path: Path) -> None:
    with sim.serve() as server, pytest.raises(exc.ProviderWaitError, match=r"Retry-After: 5\b"):
        _run(server, cache_path, "hostile [[retry_after:5]]", transport=transport, max_wait=1.0)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_402_without_retry_after_quotes_the_reason_and_suggests_max_tokens(
    transport: str, cache_path: Path
) -> None:
    with sim.serve() as server, pytest.raises(exc.InsufficientCreditsError) as info:
        _run(server, cache_path, "hostile [[credits]]", transport=transport, concurrency=1)
    text = str(info.value)
    assert "weight_exceeds_budget" in text and "openrouter_credits" in text and "lower max_tokens" in text
    with sim.serve() as server, pytest.raises(exc.InsufficientCreditsError) as info:
        _run(server, cache_path, "hostile [[credits:openrouter_key_limit]]", transport=transport)
    assert "openrouter_key_limit" in str(info.value) and "lower max_tokens" not in str(info.value)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_redirects_are_not_followed(transport: str, code: int, cache_path: Path) -> None:
    with sim.serve() as server, pytest.raises(exc.NotFoundError) as info:
        _run(server, cache_path, f"hostile [[redirect:{code}]]", transport=transport, concurrency=1)
    # followed, the request would have reached /moved/... and come back 404 without naming the redirect
    assert f"HTTP {code}" in str(info.value) and "/moved/v1/chat/completions" in str(info.value)
    assert "not followed" in str(info.value)


def test_response_size_limit_is_public() -> None:
    assert MAX_RESPONSE_BYTES == 10 * 2**20


# ------------------------------------------------------------------------------------- limit headers


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("style", ["openai", "anthropic", "ietf"])
def test_limit_headers_on_successes_set_the_pace(transport: str, style: str, cache_path: Path) -> None:
    """A provider that announces its budget on every answer is paced from it, on both transports:
    (nearly) no request is refused, although the run starts at no known limit."""
    n = 120
    with sim.serve(rate_limit=40, window=1.0, limit_headers="all", limit_header_style=style) as server:
        frame = pl.DataFrame({"prompt": [f"p{i}" for i in range(n)]})
        out = frame.llm.map("prompt", MODEL, **map_options(server, cache=cache_path, transport=transport))
        stats = server.stats(per_prompt=False)
    assert out["status"].to_list() == ["done"] * n
    assert stats["status_counts"].get("429", 0) <= 3, stats["status_counts"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_openrouter_429_reset_is_a_wait_bounded_by_max_wait(transport: str, cache_path: Path) -> None:
    """OpenRouter's 429 names its reset in epoch milliseconds (no Retry-After): a reset beyond max_wait
    stops the run with ProviderWaitError instead of waiting, and says which header it read."""
    only_reset = {"limit_header_style": "openrouter", "refusal_retry_after": False}
    with sim.serve(rate_limit=2, window=60.0, **only_reset) as server:
        frame = pl.DataFrame({"prompt": [f"p{i}" for i in range(6)]})
        options = map_options(server, cache=cache_path, transport=transport, max_wait=5.0, concurrency=2)
        with pytest.raises(exc.ProviderWaitError) as info:
            frame.llm.map("prompt", MODEL, **options)
    assert info.value.retry_after is not None and info.value.retry_after > 5.0
    assert "max_wait=5" in str(info.value) and "Retry-After" not in (info.value.hint or "")
    assert set(store_rows(cache_path)["status"]) <= {"done", "pending"}
