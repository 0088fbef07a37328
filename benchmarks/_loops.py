"""The reference clients and the measured ``.llm.map`` call, each run inside a child process.

* :func:`bare_aiohttp` — ``concurrency`` coroutines sharing one ``aiohttp`` session, orjson in and out,
  no persistence, no retries: the ceiling a Python client reaches against this server.
* :func:`openai_sdk` — the same loop through ``openai.AsyncOpenAI`` (``max_retries=0``), on its default
  httpx transport or on ``openai.DefaultAioHttpClient``; no persistence.
* :func:`llm_map` — ``DataFrame.llm.map`` with the durable DuckDB store (or ``cache=None``); the wall
  time covers everything the user waits for: hashing, the store lookup/registration, the requests, the
  batched writes and the join back onto the frame. The transport's HTTP library (aiohttp, or openai) is
  imported before the clock starts, as in the reference loops: a once-per-process cost (section 7).
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from ._common import API_KEY, MODEL, cpu_seconds, make_prompts, peak_rss_mb, rss_mb

__all__ = ["bare_aiohttp", "llm_map", "openai_sdk", "run_arm"]


def _body(prompt: str) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "temperature": 0.0}


async def _bare_aiohttp(url: str, prompts: list[str], concurrency: int) -> dict[str, Any]:
    import aiohttp
    import orjson

    endpoint = url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    answers: list[str | None] = [None] * len(prompts)
    errors = 0
    it = iter(range(len(prompts)))
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal errors
            for i in it:
                async with session.post(endpoint, data=orjson.dumps(_body(prompts[i])), headers=headers) as r:
                    raw = await r.read()
                    if r.status != 200:
                        errors += 1
                        continue
                answers[i] = orjson.loads(raw)["choices"][0]["message"]["content"]

        start, cpu0 = time.perf_counter(), cpu_seconds()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu, peak = time.perf_counter() - start, cpu_seconds() - cpu0, peak_rss_mb()
    return {"wall_s": wall, "cpu_s": cpu, "call_peak_rss_mb": peak, "errors": errors, "answers": answers}


def bare_aiohttp(url: str, prompts: list[str], concurrency: int) -> dict[str, Any]:
    return asyncio.run(_bare_aiohttp(url, prompts, concurrency))


async def _openai_sdk(url: str, prompts: list[str], concurrency: int, http: str) -> dict[str, Any]:
    import openai

    http_client = openai.DefaultAioHttpClient() if http == "aiohttp" else None
    client = openai.AsyncOpenAI(base_url=url, api_key=API_KEY, max_retries=0, http_client=http_client)
    answers: list[str | None] = [None] * len(prompts)
    errors = 0
    it = iter(range(len(prompts)))

    async def worker() -> None:
        nonlocal errors
        for i in it:
            try:
                resp = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": prompts[i]}], temperature=0.0
                )
            except openai.APIError:
                errors += 1
                continue
            answers[i] = resp.choices[0].message.content

    async with client:
        start, cpu0 = time.perf_counter(), cpu_seconds()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu, peak = time.perf_counter() - start, cpu_seconds() - cpu0, peak_rss_mb()
    return {"wall_s": wall, "cpu_s": cpu, "call_peak_rss_mb": peak, "errors": errors, "answers": answers}


def openai_sdk(url: str, prompts: list[str], concurrency: int, http: str) -> dict[str, Any]:
    return asyncio.run(_openai_sdk(url, prompts, concurrency, http))


def llm_map(url: str, prompts: list[str], concurrency: int, **options: Any) -> dict[str, Any]:
    # the transport's HTTP library is imported on first use; import it here, outside the timed call, as
    # the reference loops do (import time is section 7)
    import aiohttp  # noqa: F401
    import polars as pl

    import polars_llm  # noqa: F401  (registers .llm)

    if options.get("transport") == "openai":
        import openai  # noqa: F401

    if not options.pop("journal", True):  # the "before" arm of the journal's cost (section 1)
        from polars_llm._store import journal as _journal

        _journal.Journal.for_store = staticmethod(lambda store, *, fsync=False: None)  # type: ignore[method-assign]
    df = pl.DataFrame({"prompt": prompts})
    options.setdefault("progress", False)
    start, cpu0 = time.perf_counter(), cpu_seconds()
    out = df.llm.map("prompt", MODEL, base_url=url, api_key=API_KEY, concurrency=concurrency, **options)
    wall, cpu, peak = time.perf_counter() - start, cpu_seconds() - cpu0, peak_rss_mb()
    status = out["status"]
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "call_peak_rss_mb": peak,
        "errors": int((status != "done").sum()),
        "answers": out["result"].to_list(),
    }


class _RssSampler:
    """Samples this process's RSS every ``interval`` seconds: ``[(monotonic time, MiB), ...]``."""

    def __init__(self, interval: float) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), round(rss_mb(), 1)))
            self._stop.wait(self._interval)

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic(), round(rss_mb(), 1)))
        return self.samples


def _check(prompts: list[str], answers: list[str | None]) -> int:
    """Number of answers that are not the simulator's deterministic answer for their prompt."""
    from polars_llm.sim import expected_text

    return sum(a != expected_text(MODEL, p) for p, a in zip(prompts, answers, strict=True))


def run_arm(params: dict[str, Any]) -> dict[str, Any]:
    """One measured arm. ``params``: ``arm``, ``url``, ``n``, ``concurrency``, ``prefix``, options."""
    arm, url, c = params["arm"], params["url"], int(params["concurrency"])
    prompts = make_prompts(int(params["n"]), params["prefix"])
    sampler = _RssSampler(float(params["sample_rss"])) if params.get("sample_rss") else None
    rss_before = rss_mb()
    if arm == "bare_aiohttp":
        res = bare_aiohttp(url, prompts, c)
    elif arm in ("openai_httpx", "openai_aiohttp"):
        res = openai_sdk(url, prompts, c, arm.split("_", 1)[1])
    elif arm.startswith("map"):
        options = dict(params.get("options", {}))
        cache = options.get("cache")
        if cache is not None:
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
        res = llm_map(url, prompts, c, **options)
    else:
        raise ValueError(f"unknown arm {arm!r}")
    res["call_peak_rss_mb"] = round(res["call_peak_rss_mb"], 1)
    if sampler is not None:
        res["rss_samples"] = sampler.stop()
        res["run_rss_max_mb"] = max(r for _, r in res["rss_samples"])
    res["rss_before_mb"] = round(rss_before, 1)
    answers = res.pop("answers")
    res["wrong"] = _check(prompts, answers)
    res["n"] = len(prompts)
    res["concurrency"] = c
    res["arm"] = arm
    res["prompts_per_s"] = round(len(prompts) / res["wall_s"], 1)
    res["client_cpu_share"] = round(res.pop("cpu_s") / res["wall_s"], 3)
    res["wall_s"] = round(res["wall_s"], 3)
    return res


if __name__ == "__main__":
    from ._common import child_main

    child_main(run_arm)
