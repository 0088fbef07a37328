"""Caches written by earlier releases keep answering: same content keys, schema migrated in place.

``data/golden_keys_v1.json`` holds keys computed by release 0.1.0 (before the options/pipeline reshape).
:func:`v1_key` re-implements that key independently of the library; a cache laid out exactly as 0.1.0
wrote it (schema v2, DDL below) and filled with such keys must answer the same calls with zero requests.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import duckdb
import polars as pl
import pytest
from pydantic import BaseModel

import polars_llm
from polars_llm import MapConfig, sim
from polars_llm._request.spec import request_spec

DATA = Path(__file__).resolve().parents[1] / "data"
GOLDEN = json.loads((DATA / "golden_keys_v1.json").read_text())
PROMPTS = ["hello", "", "héllo ✓"]

# The store exactly as release 0.1.0 created it (migrations 1 and 2).
SCHEMA_V2 = """
CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at TIMESTAMP NOT NULL);
CREATE TABLE requests (
    key VARCHAR NOT NULL, prompt VARCHAR, base_url VARCHAR, model VARCHAR, system VARCHAR, params VARCHAR,
    schema_name VARCHAR, schema VARCHAR, status VARCHAR NOT NULL, result VARCHAR, error VARCHAR,
    attempts INTEGER NOT NULL DEFAULT 0, tokens_in BIGINT, tokens_out BIGINT, created_at TIMESTAMP,
    updated_at TIMESTAMP, finished_at TIMESTAMP
);
ALTER TABLE requests ADD COLUMN error_kind VARCHAR;
ALTER TABLE requests ADD COLUMN cost DOUBLE;
INSERT INTO schema_version VALUES (1, now()), (2, now());
"""


class Label(BaseModel):
    sentiment: Literal["positive", "negative"]
    stars: int


async def worker(prompt: str) -> str:
    return prompt


worker.__module__, worker.__qualname__ = "__main__", "worker"  # as the golden keys were made


def v1_key(
    *, base_url: str, model: str, system: str | None, params: dict[str, Any], schema: Any, prompt: str
) -> str:
    doc = {
        "v": 1,
        "base_url": base_url.rstrip("/"),
        "model": model,
        "system": system,
        "params": params,
        "schema": schema,
    }
    fingerprint = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    h = hashlib.blake2b(digest_size=16, person=b"polars_llm")
    h.update(fingerprint.encode() + b"\x00" + prompt.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


CASES: dict[str, dict[str, Any]] = {
    "plain": {"model": "openai/gpt-4o-mini"},
    "system": {"model": "m", "system": "be brief"},
    "no_temperature": {"model": "m", "temperature": None},
    "params": {
        "model": "m",
        "temperature": 0.7,
        "max_tokens": 64,
        "extra_body": {"provider": {"sort": "throughput"}},
    },
    "schema": {"model": "m", "response_model": Label},
    "base_url": {"model": "m", "base_url": "http://127.0.0.1:8000/v1/"},
    "worker": {"worker": worker},
    "worker_schema": {"worker": worker, "response_model": Label},
}


@pytest.mark.parametrize("case", list(CASES))
def test_content_keys_are_those_of_release_0_1(case: str) -> None:
    cfg = MapConfig(api_key="k", cache=None, **CASES[case])
    assert request_spec(cfg).key_maker().keys(PROMPTS) == GOLDEN[case]


def test_the_reference_implementation_matches_the_golden_file() -> None:
    keys = [
        v1_key(
            base_url="https://openrouter.ai/api/v1",
            model="m",
            system="be brief",
            params={"temperature": 0.0},
            schema=None,
            prompt=p,
        )
        for p in PROMPTS
    ]
    assert keys == GOLDEN["system"]


def _write_v2_cache(path: Path, rows: list[dict[str, Any]]) -> None:
    con = duckdb.connect(str(path))
    con.execute(SCHEMA_V2)
    for r in rows:
        con.execute(
            "INSERT INTO requests (key, prompt, base_url, model, params, status, result, attempts, "
            "tokens_in, tokens_out, cost, created_at, updated_at, finished_at) "
            "VALUES (?, ?, ?, ?, ?, 'done', ?, 1, 3, 4, 0.001, now(), now(), now())",
            [r["key"], r["prompt"], r["base_url"], r["model"], "{}", r["result"]],
        )
    con.close()


def test_a_cache_written_by_release_0_1_answers_without_a_request(tmp_path: Path) -> None:
    cache = tmp_path / "old.duckdb"
    prompts = ["first", "second", "third"]
    with sim.serve() as server:
        base = str(server)
        rows = [
            {
                "key": v1_key(
                    base_url=base, model="m", system=None, params={"temperature": 0.0}, schema=None, prompt=p
                ),
                "prompt": p,
                "base_url": base,
                "model": "m",
                "result": f"old answer {p}",
            }
            for p in prompts
        ]
        _write_v2_cache(cache, rows)
        df = pl.DataFrame({"prompt": [*prompts, "first"]})
        out = df.llm.map("prompt", "m", base_url=base, api_key="k", cache=cache, progress=False)
        assert server.stats()["requests"] == 0
    assert out["result"].to_list() == [f"old answer {p}" for p in [*prompts, "first"]]
    assert out["status"].to_list() == ["done"] * 4
    with duckdb.connect(str(cache), read_only=True) as con:
        versions = [v for (v,) in con.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()]
    assert versions[:2] == [1, 2] and versions[-1] >= 2  # migrated in place, never rewritten


def test_a_worker_cache_of_release_0_1_is_reused(tmp_path: Path) -> None:
    cache = tmp_path / "worker.duckdb"
    calls: list[str] = []

    async def counting(prompt: str) -> str:
        calls.append(prompt)
        return "new"

    counting.__module__, counting.__qualname__ = "__main__", "worker"
    rows = [
        {"key": k, "prompt": p, "base_url": "worker:__main__.worker", "model": "", "result": "cached"}
        for k, p in zip(GOLDEN["worker"], PROMPTS, strict=True)
    ]
    _write_v2_cache(cache, rows)
    out = polars_llm.llm_map_series(pl.Series(PROMPTS), worker=counting, cache=cache, progress=False)
    assert calls == []
    assert out.struct.field("result").to_list() == ["cached"] * 3
