"""Row operators against a real small model: does ``classify`` give valid labels with and without ``pack``?

``uv run python -m benchmarks.real_model [--server URL] [--n 1000] [--max-tokens 64] [--concurrency 2]
[--threads 1] [--out DIR]`` writes ``<out>/real_model-<UTC timestamp>.json`` (default
``benchmarks/results``). Without ``--server`` it starts ``llama-server`` from ``$POLARS_LLM_LLAMA_SERVER``
on the model ``$POLARS_LLM_LLAMA_MODEL`` with ``--concurrency`` slots and ``--threads`` threads (see
:mod:`benchmarks._llama` for how both files were obtained); with ``--server`` it uses a running
OpenAI-compatible server (``--concurrency`` should match its slots). Either way a counting proxy sits in
front, so requests and tokens are the server's own ``usage``.

The workload is :mod:`benchmarks.operators`' (the same texts, labels and 300-character instructions):
``n`` texts of ~150 characters, ``classify`` into 5 labels with ``pack=1`` and with ``pack=20``, a fresh
cache each. Per setting: the share of rows with a valid label (a non-null ``Enum`` value), requests,
input and output tokens, answers cut at ``max_tokens``, wall time; then how often the two settings give
the same label, and (a bonus: a 135M model is not expected to be accurate) how often each gives the
label the text names. Target (issue 24): both settings give a valid label for ≥ 99 % of rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import polars as pl

import polars_llm  # noqa: F401  (registers the namespaces)

from ._common import BENCH_DIR, write_result
from ._llama import MODEL_ENV, SERVER_ENV, CountingProxy, LlamaServer, llama_paths
from .operators import INSTRUCTIONS, LABELS, texts

__all__ = ["classify_arm", "run"]

MODEL = "smollm2-135m-instruct"  # llama-server answers with the model it loaded, whatever the name
TARGET = 0.99


def classify_arm(
    proxy: CountingProxy, series: pl.Series, cache: Path, *, pack: int, max_tokens: int, concurrency: int
) -> dict[str, Any]:
    """One setting: ``classify`` over ``series`` through ``proxy``; what the server saw and what came back
    (``labels`` is the column, for the comparison between settings)."""
    before = proxy.snapshot()
    start = time.perf_counter()
    out = series.llm.classify(
        LABELS, instructions=INSTRUCTIONS, model=MODEL, base_url=proxy.url, api_key="none", cache=cache,
        progress=False, pack=pack, max_tokens=max_tokens, concurrency=concurrency,
        include=("status", "error"), timeout=300.0,
    )  # fmt: skip
    wall = time.perf_counter() - start
    after = proxy.snapshot()
    labels = out.struct.field("result").cast(pl.String)
    errors = Counter(e.split(":")[0][:80] for e in out.struct.field("error").drop_nulls().to_list())
    return {
        "pack": pack,
        "valid": round(labels.is_not_null().mean() or 0.0, 4),
        "valid_rows": int(labels.is_not_null().sum()),
        **{k: after[k] - before[k] for k in after},
        "wall_s": round(wall, 1),
        "status": dict(Counter(out.struct.field("status").to_list())),
        "errors": dict(errors.most_common(5)),
        "labels": labels,
    }


def _server_info(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url.removesuffix("/v1") + "/props", timeout=10) as resp:
            props = json.load(resp)
    except (OSError, ValueError):
        return {}
    keys = ("build_info", "model_path", "total_slots")
    return {k: props[k] for k in keys if k in props} | {
        "n_ctx": (props.get("default_generation_settings") or {}).get("n_ctx")
    }


def run(
    server: str | None,
    n: int = 1000,
    max_tokens: int = 64,
    concurrency: int = 2,
    packs: tuple[int, ...] = (1, 20),
    threads: int = 1,
) -> dict[str, Any]:
    series = pl.Series("text", texts(n))
    planted = pl.Series([LABELS[i % len(LABELS)] for i in range(n)])
    with ExitStack() as stack:
        if server is None:
            paths = llama_paths()
            if paths is None:
                raise SystemExit(f"pass --server URL, or set {SERVER_ENV} and {MODEL_ENV} to existing files")
            llama = stack.enter_context(LlamaServer(*paths, slots=concurrency, threads=threads))
            server = llama.url
        proxy = stack.enter_context(CountingProxy(server))
        tmp = Path(stack.enter_context(TemporaryDirectory(prefix="bench-real-model-")))
        arms = [classify_arm(proxy, series, tmp / f"pack{p}.duckdb", pack=p, max_tokens=max_tokens,
                             concurrency=concurrency) for p in packs]  # fmt: skip
        info = _server_info(server)
    for arm in arms:
        arm["right"] = round(float((arm["labels"] == planted).fill_null(False).mean() or 0.0), 4)
    first, last = arms[0], arms[-1]
    both = first["labels"].is_not_null() & last["labels"].is_not_null()
    same = (first["labels"] == last["labels"]).fill_null(False)
    agreement = {
        "same_label": round(float(same.mean() or 0.0), 4),
        "same_label_where_both_valid": round(float(same.filter(both).mean() or 0.0), 4),
    }
    result: dict[str, Any] = {
        "params": {
            "n": n,
            "labels": len(LABELS),
            "instructions_chars": len(INSTRUCTIONS),
            "text_chars": round(sum(map(len, texts(n))) / n),
            "max_tokens": max_tokens,
            "concurrency": concurrency,
            "model": MODEL,
            "server": info,
        },
        "arms": {f"pack={a['pack']}": {k: v for k, v in a.items() if k != "labels"} for a in arms},
        "agreement": agreement,
    }
    for name, arm in result["arms"].items():
        base = result["arms"][f"pack={first['pack']}"]
        arm["requests_ratio"] = round(arm["requests"] / max(1, base["requests"]), 4)
        arm["tokens_in_ratio"] = round(arm["tokens_in"] / max(1, base["tokens_in"]), 4)
        result.setdefault("targets", []).append(
            {
                "name": f"{name} valid labels",
                "measured": arm["valid"],
                "target": f">= {TARGET}",
                "met": arm["valid"] >= TARGET,
            }
        )
    return result


def _binary_version() -> str | None:
    paths = llama_paths()
    if paths is None:
        return None
    args = [str(paths[0]), "--version"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    return (done.stdout + done.stderr).strip()[-300:] or None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="base URL of a running OpenAI-compatible server (ends in /v1)")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=64, help="per answer; a pack of N gets N times it")
    parser.add_argument("--concurrency", type=int, default=2, help="in flight (= server slots)")
    parser.add_argument("--threads", type=int, default=1, help="llama-server -t when started here")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results")
    args = parser.parse_args()
    result = run(args.server, args.n, args.max_tokens, args.concurrency, threads=args.threads)
    command = " ".join(["uv run python -m benchmarks.real_model", *sys.argv[1:]])
    result["meta"] = {"llama_server_version": None if args.server else _binary_version()}
    write_result(args.out, "real_model", result, command, ("arms", "agreement", "targets"))


if __name__ == "__main__":
    main()
