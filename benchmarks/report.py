"""Markdown tables from a results JSON: ``python -m benchmarks.report [benchmarks/results/latest.json]``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["markdown"]

SECTION_TITLES = {
    "overhead": "1. Overhead (zero latency, c=64)",
    "latency": "2. Latency-bound efficiency (100 ± 20 ms)",
    "rate_limits": "3. Rate limits",
    "resume": "4. Resume waste (SIGKILL at 25/50/75 %)",
    "cached_rerun": "5. Cached rerun",
    "memory": "6. Memory",
    "import_time": "7. Import time",
    "cost": "8. Cost (estimate, budget)",
    "embeddings": "9. Embeddings (zero latency, 256 dims)",
    "struct_input": "10. Struct input (zero latency, c=64)",
    "out_of_core": "11. Out of core (streamed runs)",
    "ray": "12. Ray Data (one cluster-wide rate limit)",
    "operators": "13. Row operators (pack, classify's overhead)",
    "setops": "14. Set operators (reduce, join, top_k)",
}


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:#.3g}" if value < 10 else f"{value:.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _met(value: bool | None) -> str:
    return {True: "✅ met", False: "❌ missed", None: "report"}[value]


def targets_table(results: dict[str, Any]) -> str:
    lines = ["| Section | Measure | Measured | Target | |", "|---|---|---:|---|---|"]
    for key, title in SECTION_TITLES.items():
        section = results.get(key)
        if not isinstance(section, dict):
            continue
        if "error" in section and "targets" not in section:
            lines.append(f"| {title} | (section failed: {section['error'][:80]}) | — | — | ❌ |")
            continue
        for t in section.get("targets", []):
            lines.append(
                f"| {title} | {t['name']} | {_fmt(t['measured'])} | {t['target']} | {_met(t['met'])} |"
            )
            title = ""
    return "\n".join(lines)


def overhead_table(results: dict[str, Any]) -> str:
    section = results.get("overhead")
    if not isinstance(section, dict) or "prompts_per_s" not in section:
        return ""
    rates = section["prompts_per_s"]
    bare = rates.get("bare_aiohttp")
    labels = {
        "bare_aiohttp": "bare aiohttp loop (no persistence)",
        "map_aiohttp": "`.llm.map`, DuckDB store, aiohttp transport (default)",
        "map_memory": "`.llm.map`, `cache=None`, aiohttp transport",
        "openai_httpx": "openai SDK loop, default httpx transport (no persistence)",
        "openai_aiohttp": "openai SDK loop, `DefaultAioHttpClient` (no persistence)",
        "map_openai": '`.llm.map`, DuckDB store, `transport="openai"`',
    }
    lines = ["| Client | prompts/s | ÷ bare aiohttp |", "|---|---:|---:|"]
    for arm, label in labels.items():
        rate = rates.get(arm)
        ratio = f"{rate / bare:.2f}" if rate and bare else "—"
        lines.append(f"| {label} | {_fmt(rate)} | {ratio} |")
    return "\n".join(lines)


def markdown(results: dict[str, Any]) -> str:
    meta = results.get("meta", {})
    machine = meta.get("machine", {})
    versions = meta.get("versions", {})
    head = (
        f"Run {meta.get('started', '?')} ({meta.get('mode', '?')} mode, {meta.get('duration_s', '?')} s) on "
        f"{machine.get('cpu_count', '?')} CPUs ({machine.get('cpu_model', '?')}), Python "
        f"{machine.get('python', '?')}, load average {meta.get('loadavg_start', '?')} → "
        f"{meta.get('loadavg_end', '?')}; " + ", ".join(f"{k} {v}" for k, v in versions.items())
    )
    parts = [head, ""]
    if meta.get("mode") == "smoke":
        parts += ["(smoke run: sizes too small for these figures to mean anything)", ""]
    parts.append(targets_table(results))
    table = overhead_table(results)
    if table:
        parts += ["", table]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "latest.json"
    print(markdown(json.loads(path.read_text())))
