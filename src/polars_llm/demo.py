"""The main job: label a few thousand product reviews (with duplicates) on the built-in simulator."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, Field

from ._config.options import DEFAULT_CACHE_PATH

__all__ = ["ReviewLabel", "demo_frame", "run_demo"]

DEMO_PORT = 18765  # fixed so the content keys (which include base_url) match on a re-run


class Aspect(StrEnum):
    price = "price"
    quality = "quality"
    shipping = "shipping"
    support = "support"


class ReviewLabel(BaseModel):
    sentiment: Literal["positive", "neutral", "negative"]
    stars: int = Field(description="1 to 5")
    aspects: list[Aspect]
    summary: str
    needs_reply: bool


_PRODUCTS = ["kettle", "headphones", "desk lamp", "backpack", "coffee grinder", "phone case", "umbrella"]
_OPINIONS = [
    "arrived late but works fine",
    "broke after two days",
    "great value for the price",
    "support never answered my emails",
    "exactly as described",
    "feels cheap and flimsy",
    "best purchase this year",
    "the colour is different from the photos",
]


def demo_frame(rows: int = 3000, *, seed: int = 7) -> pl.DataFrame:
    """``rows`` reviews drawn from a pool of about a third as many distinct texts (so with duplicates)."""
    pool = [
        f"Review of the {p}: {o} (order #{i})"
        for i, (p, o) in enumerate(
            (p, o)
            for _ in range(max(1, rows // (3 * len(_PRODUCTS) * len(_OPINIONS))) + 1)
            for p in _PRODUCTS
            for o in _OPINIONS
        )
    ][: max(1, rows // 3)]
    picks = pl.Series(range(rows)).hash(seed) % len(pool)  # any spread will do; not used for keys
    return pl.DataFrame({"review_id": range(rows), "review": [pool[i] for i in picks.to_list()]})


def run_demo(
    *,
    rows: int = 3000,
    output: Path = Path("demo_results.parquet"),
    cache: Path = DEFAULT_CACHE_PATH,
    latency: float = 0.02,
    concurrency: int = 64,
    progress: bool = True,
    real: bool = False,
    rpm_limit: float | None = None,
) -> dict[str, object]:
    """Run the demo against ``polars_llm.sim`` (or, with ``real=True``, the provider named by ``MODEL`` /
    ``OPENROUTER_API_KEY`` / ``POLARS_LLM_BASE_URL``); write ``output``; return the summary it prints."""
    df = demo_frame(rows)
    if real:
        t0 = time.perf_counter()
        out = df.llm.map(
            "review",
            system="Label the customer review.",
            response_model=ReviewLabel,
            concurrency=concurrency,
            rpm_limit=rpm_limit,
            cache=cache,
            progress=progress,
        )
        return _summarise(df, out, time.perf_counter() - t0, None, output, cache)

    from . import sim

    try:
        server_cm = sim.serve(port=DEMO_PORT, latency=latency, jitter=latency / 2)
        server = server_cm.__enter__()
    except OSError:
        server_cm = sim.serve(latency=latency, jitter=latency / 2)
        server = server_cm.__enter__()
    try:
        t0 = time.perf_counter()
        out = df.llm.map(
            "review",
            "sim/demo-model",
            system="Label the customer review.",
            response_model=ReviewLabel,
            base_url=str(server),
            api_key="sk-demo-not-secret",
            concurrency=concurrency,
            cache=cache,
            progress=progress,
        )
        elapsed = time.perf_counter() - t0
        stats = server.stats(per_prompt=False)
    finally:
        server_cm.__exit__(None, None, None)
    return _summarise(df, out, elapsed, stats, output, cache)


def _summarise(
    df: pl.DataFrame,
    out: pl.DataFrame,
    elapsed: float,
    stats: dict[str, Any] | None,
    output: Path,
    cache: Path,
) -> dict[str, object]:
    out = out.unnest("result")
    out.write_parquet(output)
    unique = df["review"].n_unique()
    summary: dict[str, object] = {
        "rows": out.height,
        "unique_prompts": unique,
        "requests_sent": stats["requests"] if stats else "n/a (see `polars-llm status`)",
        "seconds": round(elapsed, 2),
        "rows_per_s": round(out.height / elapsed) if elapsed > 0 else None,
        "status": dict(out["status"].value_counts().iter_rows()),
        "sentiment": dict(out["sentiment"].value_counts().sort("sentiment").iter_rows()),
        "output": str(output),
        "cache": str(cache),
    }
    return summary
