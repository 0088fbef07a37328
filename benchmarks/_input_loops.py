"""The arms of sections 8 (embeddings) and 9 (struct input), each run inside a child process.

* ``bare_embed`` — ``concurrency`` coroutines sharing one ``aiohttp`` session, sending the same batched
  ``/embeddings`` requests as ``llm.embed`` (``batch_size`` texts each), orjson-decoding every answer and
  keeping nothing (no persistence, no retries): the ceiling.
* ``embed`` — ``DataFrame.llm.embed`` with the DuckDB store (or ``cache=None``); the wall time covers
  hashing, the store, the requests, the batched writes of the vectors and the result column.
* ``plain`` / ``struct`` — ``DataFrame.llm.map`` over a String column with a ``system=`` option, and over
  ``pl.struct(prompt=..., system=...)`` where every row has its own system prompt of the same length.

Every arm checks its answers against the simulator's deterministic ones.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from ._common import API_KEY, MODEL, cpu_seconds, make_prompts, peak_rss_mb

__all__ = ["run_arm", "system_prompts"]


def system_prompts(n: int) -> list[str]:
    """``n`` distinct system prompts of one length (row ``i`` gets its own)."""
    return [f"You label shop reviews for store {i:07d}; answer in one line." for i in range(n)]


async def _bare_embed(url: str, texts: list[str], concurrency: int, batch: int, dims: int) -> dict[str, Any]:
    import aiohttp
    import orjson

    endpoint = url.rstrip("/") + "/embeddings"
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    groups = iter(range(0, len(texts), batch))
    errors = wrong = 0
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors, wrong
            for lo in groups:
                chunk = texts[lo : lo + batch]
                body = {"model": MODEL, "input": chunk, "encoding_format": "float", "dimensions": dims}
                async with session.post(endpoint, data=orjson.dumps(body), headers=headers) as r:
                    raw = await r.read()
                    if r.status != 200:
                        errors += len(chunk)
                        continue
                data = orjson.loads(raw)["data"]
                wrong += len(chunk) - sum(len(d["embedding"]) == dims for d in data)

        start, cpu0 = time.perf_counter(), cpu_seconds()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    return {"wall_s": wall, "cpu_s": cpu, "errors": errors, "wrong": wrong}


def _embed(
    url: str, texts: list[str], concurrency: int, batch: int, dims: int, cache: str | None
) -> dict[str, Any]:
    import aiohttp  # noqa: F401  (imported before the clock, as in the bare loop)
    import polars as pl

    import polars_llm  # noqa: F401
    from polars_llm.sim import expected_embedding

    df = pl.DataFrame({"text": texts})
    start, cpu0 = time.perf_counter(), cpu_seconds()
    out = df.llm.embed(
        "text", MODEL, dims, base_url=url, api_key=API_KEY, cache=cache, concurrency=concurrency,
        batch_size=batch, progress=False,
    )  # fmt: skip
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    sample = range(0, len(texts), max(1, len(texts) // 50))
    vectors = out["result"]
    wrong = sum(vectors[i].to_list() != expected_embedding(MODEL, texts[i], dims) for i in sample)
    return {"wall_s": wall, "cpu_s": cpu, "errors": int((out["status"] != "done").sum()), "wrong": wrong}


def _map(url: str, prompts: list[str], concurrency: int, struct: bool, cache: str | None) -> dict[str, Any]:
    import aiohttp  # noqa: F401
    import polars as pl

    import polars_llm  # noqa: F401
    from polars_llm.sim import expected_text

    systems = system_prompts(len(prompts))
    df = pl.DataFrame({"prompt": prompts, "system": systems})
    common = {
        "base_url": url,
        "api_key": API_KEY,
        "cache": cache,
        "concurrency": concurrency,
        "progress": False,
    }
    start, cpu0 = time.perf_counter(), cpu_seconds()
    if struct:
        out = df.llm.map(pl.struct("prompt", "system"), MODEL, **common)
    else:
        out = df.llm.map("prompt", MODEL, system=systems[0], **common)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu0
    answers = out["result"].to_list()
    expect = [
        expected_text(MODEL, p, s if struct else systems[0]) for p, s in zip(prompts, systems, strict=True)
    ]
    wrong = sum(a != e for a, e in zip(answers, expect, strict=True))
    return {"wall_s": wall, "cpu_s": cpu, "errors": int((out["status"] != "done").sum()), "wrong": wrong}


def run_arm(params: dict[str, Any]) -> dict[str, Any]:
    """One measured arm: ``arm``, ``url``, ``n``, ``concurrency``, ``prefix`` and the arm's own options."""
    arm, url, c, n = params["arm"], params["url"], int(params["concurrency"]), int(params["n"])
    items = make_prompts(n, params["prefix"])
    cache = params.get("cache")
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
    if arm == "bare_embed":
        res = asyncio.run(_bare_embed(url, items, c, params["batch_size"], params["dimensions"]))
    elif arm == "embed":
        res = _embed(url, items, c, params["batch_size"], params["dimensions"], cache)
    elif arm in ("plain", "struct"):
        res = _map(url, items, c, arm == "struct", cache)
    else:
        raise ValueError(f"unknown arm {arm!r}")
    res.update(
        arm=arm,
        n=n,
        concurrency=c,
        rows_per_s=round(n / res["wall_s"], 1),
        client_cpu_share=round(res.pop("cpu_s") / res["wall_s"], 3),
        wall_s=round(res["wall_s"], 3),
        call_peak_rss_mb=round(peak_rss_mb(), 1),
    )
    return res


if __name__ == "__main__":
    from ._common import child_main

    child_main(run_arm)
