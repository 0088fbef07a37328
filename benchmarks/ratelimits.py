"""3. Rate limits: does the client find a provider's cap without hammering it, and keep to it?

**No client limit** (the matrix): the simulator enforces a cap the client is not told about, in one of
several shapes — a sliding window of 1 s, 10 s or 60 s, a fixed window, a token bucket, a token cap —
with latency 0, 50 or 500 ms (± jitter) and concurrency 16, 64 or 256; every value occurs in at least
one cell, and only cells where concurrency ÷ latency ≥ 1.5 × the cap are run (the cap is reachable).
Per cell: 429s as a share of all requests, achieved ÷ cap, failed rows. Long windows are judged on the
steady state after the first window; the first window is reported apart.

**Cap changes**: a 1 s sliding cap halves mid-run, then doubles back: 429 share overall, and the seconds
from each change until the rate admitted over the last second is ≥ 0.9 × the new cap.

**Limit headers** (OpenAI style on every answer): 429 share and achieved ÷ cap from the first second.

**Client limits** (``rpm_limit`` / ``tpm_limit`` at 95 % of the cap): achieved ÷ limit and 429s.

Achieved rates are counted at the server (sampled every 0.1 s) over whole limit windows (see
:func:`benchmarks._common.windowed_rate`), so a bursty client cannot score above the cap.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from ._common import MODEL, SimProcess, StatsPoller, make_prompts, run_child

__all__ = ["CELLS", "run"]

CLIENT_SHARE = 0.95

# name: simulator options, client options, cap (requests/s, or tokens/s for a token cap), seconds, window
CELLS: dict[str, dict[str, Any]] = {
    "sliding1s-cap50-lat0-c64": {
        "sim": {"rate_limit": 50, "window": 1.0},
        "concurrency": 64,
        "seconds": 25,
    },
    "sliding1s-cap500-lat50ms-c256": {
        "sim": {"rate_limit": 500, "window": 1.0, "latency": 0.05, "jitter": 0.02},
        "concurrency": 256,
        "seconds": 20,
    },
    "sliding1s-cap50-lat500ms-c64": {  # the gentle start costs ~2 s at this latency: a longer run
        "sim": {"rate_limit": 50, "window": 1.0, "latency": 0.5, "jitter": 0.1},
        "concurrency": 64,
        "seconds": 60,
    },
    "sliding1s-cap5-lat500ms-c16": {  # the hardest: few requests per probe, slow feedback
        "sim": {"rate_limit": 5, "window": 1.0, "latency": 0.5, "jitter": 0.1},
        "concurrency": 16,
        "seconds": 60,
    },
    "sliding10s-cap50-lat50ms-c64": {
        "sim": {"rate_limit": 500, "window": 10.0, "latency": 0.05, "jitter": 0.02},
        "concurrency": 64,
        "seconds": 45,
    },
    "sliding60s-cap5-lat0-c16": {
        "sim": {"rate_limit": 300, "window": 60.0},
        "concurrency": 16,
        "seconds": 150,
    },
    "fixed1s-cap50-lat50ms-c64": {
        "sim": {"rate_limit": 50, "window": 1.0, "limit_shape": "fixed", "latency": 0.05, "jitter": 0.02},
        "concurrency": 64,
        "seconds": 25,
    },
    "bucket-cap50-lat0-c256": {
        "sim": {"rate_limit": 50, "window": 1.0, "limit_shape": "bucket"},
        "concurrency": 256,
        "seconds": 25,
    },
    "tokens10s-cap50rps-lat50ms-c64": {
        "sim": {"tpm_window": 10.0, "latency": 0.05, "jitter": 0.02},
        "tokens_per_s_as_requests": 50,
        "concurrency": 64,
        "seconds": 45,
    },
}


def _cap(cell: dict[str, Any], per_request: float) -> tuple[float, float, str]:
    """``(cap per second, window seconds, unit)`` of a cell."""
    sim = cell["sim"]
    if "tokens_per_s_as_requests" in cell:
        return cell["tokens_per_s_as_requests"] * per_request, sim["tpm_window"], "tokens"
    return sim["rate_limit"] / sim["window"], sim["window"], "requests"


def _tokens_per_request(prefix: str) -> float:
    """Prompt + completion tokens the simulator counts for one of this case's prompts."""
    from polars_llm.sim import count_tokens, expected_text

    sample = make_prompts(2000, prefix)[1000:1020]  # 4-digit indices, like most prompts of a run
    return sum(count_tokens(p) + count_tokens(expected_text(MODEL, p)) for p in sample) / len(sample)


def _rate_between(series: list[tuple[float, float]], t0: float, t1: float) -> float | None:
    """Increase per second of a sampled counter between ``t0`` and ``t1`` (nearest samples inside)."""
    inside = [p for p in series if t0 <= p[0] <= t1]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])


def _value_at(series: list[tuple[float, float]], t: float) -> float:
    before = [v for s, v in series if s <= t]
    return before[-1] if before else (series[0][1] if series else 0.0)


def _whole_windows(
    series: list[tuple[float, float]], start: float, window: float, hi: float = 0.9
) -> float | None:
    """Rate over the largest whole number of ``window``s from ``start`` before the counter passes
    ``hi`` of its final value (the tail where work runs out is left out)."""
    if len(series) < 3:
        return None
    base, final = series[0][1], series[-1][1]
    t_hi = next((t for t, v in series if v - base >= hi * (final - base)), None)
    if t_hi is None:
        return None
    k = int((t_hi - start) // window)
    if k < 1:
        return None
    return (_value_at(series, start + k * window) - _value_at(series, start)) / (k * window)


def _first_move(series: list[tuple[float, float]]) -> float | None:
    base = series[0][1] if series else 0.0
    i = next((i for i, p in enumerate(series) if p[1] > base), None)
    if i is None:
        return None
    return series[i - 1][0] if i else series[0][0]


def _measure(poller: StatsPoller, window: float, unit: str, cap: float, skip: float) -> dict[str, Any]:
    ok = poller.series("tokens" if unit == "tokens" else "ok")
    requests, limited = poller.series("requests"), poller.series("429")
    start = _first_move(requests)
    out: dict[str, Any] = {}
    if start is None:
        return out
    total, total_429 = requests[-1][1] - requests[0][1], limited[-1][1] - limited[0][1]
    out["share_429"] = round(total_429 / total, 4) if total else None
    out["achieved_over_cap"] = _ratio(_whole_windows(ok, start, window), cap)
    if skip:
        steady = start + skip
        n = requests[-1][1] - _value_at(requests, steady)
        n429 = limited[-1][1] - _value_at(limited, steady)
        out["steady_share_429"] = round(n429 / n, 4) if n else None
        out["steady_achieved_over_cap"] = _ratio(_whole_windows(ok, steady, window), cap)
        first_n = _value_at(requests, steady) - requests[0][1]
        first_429 = _value_at(limited, steady) - limited[0][1]
        out["first_window_share_429"] = round(first_429 / first_n, 4) if first_n else None
        out["first_window_achieved_over_cap"] = _ratio(_rate_between(ok, start, steady), cap)
    return out


def _ratio(a: float | None, b: float) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _child(
    sim: SimProcess, n: int, concurrency: int, prefix: str, workdir: Path, options: dict[str, Any]
) -> dict:
    return run_child(
        "_loops",
        {
            "arm": "map_aiohttp",
            "url": sim.url,
            "n": n,
            "concurrency": concurrency,
            "prefix": prefix,
            "options": {"cache": str(workdir / f"rate-{prefix}.duckdb"), **options},
        },
        sim=sim,
    )


def _cell(name: str, cell: dict[str, Any], scale: float, workdir: Path) -> dict[str, Any]:
    per_request = _tokens_per_request(name)
    cap, window, unit = _cap(cell, per_request)
    sim_options = dict(cell["sim"])
    if unit == "tokens":
        sim_options["tpm_limit"] = int(cap * window)
    seconds = max(2.0, cell["seconds"] * scale)
    per_second = cap / per_request if unit == "tokens" else cap
    n = max(20, int(per_second * seconds))
    skip = window if window > 1.0 else 0.0
    with SimProcess(**sim_options) as sim, StatsPoller(sim, 0.1) as poller:
        res = _child(sim, n, cell["concurrency"], name, workdir, cell.get("client", {}))
    stats = poller.samples[-1][1] if poller.samples else {}
    res.update(_measure(poller, window, unit, cap, skip if seconds > 2 * window else 0.0))
    res.update(
        {
            "cell": name,
            "cap_per_s": round(cap, 1),
            "unit": unit,
            "window_s": window,
            "sim": sim_options,
            "failed_rows": res.get("errors"),
            "server_requests": stats.get("requests"),
            "server_429": stats.get("status_counts", {}).get("429", 0),
        }
    )
    return res


def _cap_change(scale: float, workdir: Path) -> dict[str, Any]:
    """A 1 s sliding cap of C, halved after a third of the run, doubled back after two thirds."""
    cap, third = 100, max(3.0, 15.0 * scale)
    n = int(cap * third + cap / 2 * third + cap * third)
    changes: list[tuple[float, int]] = []

    def drive(sim: SimProcess, poller: StatsPoller, stop: threading.Event) -> None:
        while not stop.is_set() and not (poller.samples and poller.samples[-1][1]["requests"] > 0):
            time.sleep(0.02)
        begin = time.monotonic()
        for at, new in ((third, cap // 2), (2 * third, cap)):
            if stop.wait(max(0.0, begin + at - time.monotonic())):
                return
            sim.configure(rate_limit=new)
            changes.append((time.monotonic(), new))

    sim_options = {"rate_limit": cap, "window": 1.0, "latency": 0.05, "jitter": 0.02}
    with SimProcess(**sim_options) as sim, StatsPoller(sim, 0.1) as poller:
        stop = threading.Event()
        driver = threading.Thread(target=drive, args=(sim, poller, stop), daemon=True)
        driver.start()
        res = _child(sim, n, 64, "capchange", workdir, {})
        stop.set()
        driver.join()
    requests, limited, ok = poller.series("requests"), poller.series("429"), poller.series("ok")
    total = requests[-1][1] - requests[0][1]
    res["share_429"] = round((limited[-1][1] - limited[0][1]) / total, 4) if total else None
    res["failed_rows"] = res.get("errors")
    recoveries = []
    for at, new in changes:
        back = next(
            (t - at for t, _ in ok if t >= at + 1.0 and (_rate_between(ok, t - 1.0, t) or 0) >= 0.9 * new),
            None,
        )
        recoveries.append({"new_cap": new, "seconds_to_0_9": round(back, 1) if back is not None else None})
    res.update({"cap": cap, "changes": recoveries, "timeline": _timeline(ok, limited, cap, changes)})
    return res


def _timeline(
    ok: list[tuple[float, float]],
    limited: list[tuple[float, float]],
    cap: int,
    changes: list[tuple[float, int]],
) -> list[list[float]]:
    """Per 0.5 s from the first answer: [seconds, admitted/s over the last second, 429s/s, the cap then]
    (what ``scripts/plot_rate_limits.py`` draws)."""
    if len(ok) < 3:
        return []
    start, end = ok[0][0], ok[-1][0]
    rows, t = [], start + 1.0
    while t <= end:
        now = next((c for at, c in reversed(changes) if at <= t), cap)
        admitted = _rate_between(ok, t - 1.0, t) or 0.0
        refused = _rate_between(limited, t - 1.0, t) or 0.0
        rows.append([round(t - start, 2), round(admitted, 1), round(refused, 1), now])
        t += 0.5
    return rows


def _client_limits(scale: float, workdir: Path) -> dict[str, Any]:
    cap, seconds = 200, max(1.5, 20 * scale)
    with SimProcess(latency=0.02, rate_limit=cap, window=1.0) as sim, StatsPoller(sim, 0.1) as poller:
        limit = CLIENT_SHARE * cap
        res = _child(sim, int(limit * seconds), 64, "rpm-a", workdir, {"rpm_limit": limit * 60})
    rpm = {**res, **_measure(poller, 1.0, "requests", limit, 0.0)}
    rpm["server_429"] = poller.samples[-1][1]["status_counts"].get("429", 0)
    per_request = _tokens_per_request("tpm-a")
    tpm_window = 10.0 if scale >= 0.5 else 1.0
    token_cap = int(cap * per_request * tpm_window)
    limit_tps = CLIENT_SHARE * token_cap / tpm_window
    sim_options = {"latency": 0.02, "tpm_limit": token_cap, "tpm_window": tpm_window}
    with SimProcess(**sim_options) as sim, StatsPoller(sim, 0.1) as poller:
        n = int(limit_tps / per_request * max(1.5, 30 * scale))
        res = _child(sim, n, 64, "tpm-a", workdir, {"tpm_limit": limit_tps * 60})
    tpm = {**res, **_measure(poller, tpm_window, "tokens", limit_tps, 0.0)}
    tpm["server_429"] = poller.samples[-1][1]["status_counts"].get("429", 0)
    return {"rpm": rpm, "tpm": tpm}


def _headers(scale: float, workdir: Path) -> dict[str, Any]:
    out = {}
    for shape in ("sliding", "bucket", "fixed"):
        sim_options = {"rate_limit": 50, "window": 1.0, "limit_shape": shape, "limit_headers": "all"}
        sim_options.update(latency=0.05, jitter=0.02)
        cell = {"sim": sim_options, "concurrency": 64, "seconds": 20}
        out[shape] = _cell(f"headers-{shape}", cell, scale, workdir)
    return out


def run(scale: dict[str, Any], workdir: Path) -> dict[str, Any]:
    factor = scale["rate_scale"]
    names = scale.get("rate_cells") or list(CELLS)
    out: dict[str, Any] = {"params": {"scale": factor, "cells": {n: CELLS[n] for n in names}}}
    targets: list[dict[str, Any]] = []
    matrix = {}
    for name in names:
        res = _cell(name, CELLS[name], factor, workdir)
        matrix[name] = res
        share = res.get("steady_share_429", res.get("share_429"))
        achieved = res.get("steady_achieved_over_cap", res.get("achieved_over_cap"))
        if achieved is None:  # a run shorter than a window (smoke): rows ÷ wall time instead
            achieved = _ratio(res.get("prompts_per_s"), res["cap_per_s"] if res["unit"] == "requests" else 0)
        targets += [
            _t(f"{name}: 429s ÷ requests", share, "<= 0.03", 0.03, op="le"),
            _t(f"{name}: achieved ÷ cap", achieved, ">= 0.9", 0.9),
            _t(f"{name}: failed rows", res.get("failed_rows"), "0", 0, op="eq"),
        ]
    out["matrix"] = matrix
    if scale.get("rate_extras", True):
        change = _cap_change(factor, workdir)
        out["cap_change"] = change
        targets.append(
            _t("cap halved then doubled: 429s ÷ requests", change["share_429"], "<= 0.03", 0.03, "le")
        )
        for step in change["changes"]:
            label = f"cap change to {step['new_cap']}/s: seconds to ≥ 0.9 × new cap"
            targets.append(_t(label, step["seconds_to_0_9"], "<= 10", 10, op="le"))
        headers = _headers(factor, workdir)
        out["headers"] = headers
        for shape, res in headers.items():
            targets += [
                _t(f"limit headers ({shape}): 429s ÷ requests", res.get("share_429"), "<= 0.01", 0.01, "le"),
                _t(f"limit headers ({shape}): achieved ÷ cap", res.get("achieved_over_cap"), ">= 0.95", 0.95),
            ]
    client = _client_limits(factor, workdir)
    out["client_limits"] = client
    for kind in ("rpm", "tpm"):
        res = client[kind]
        achieved = res.get("achieved_over_cap")
        targets += [
            _t(f"{kind}_limit at 95 % of cap: achieved ÷ limit", achieved, ">= 0.97", 0.97),
            _t(f"{kind}_limit at 95 % of cap: 429 responses", res["server_429"], "0", 0, op="eq"),
        ]
    out["targets"] = targets
    return out


def _t(name: str, measured: float | None, target: str, bound: float, op: str = "ge") -> dict[str, Any]:
    if measured is None:
        met = False
    elif op == "ge":
        met = measured >= bound
    elif op == "le":
        met = measured <= bound
    else:
        met = measured == bound
    return {"name": name, "measured": measured, "target": target, "met": met}


if __name__ == "__main__":  # one cell: python -m benchmarks.ratelimits NAME [scale]
    import json
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        which, factor = sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
        if which == "cap_change":
            result = _cap_change(factor, Path(tmp))
        elif which == "headers":
            result = _headers(factor, Path(tmp))
        elif which == "client":
            result = _client_limits(factor, Path(tmp))
        else:
            result = _cell(which, CELLS[which], factor, Path(tmp))
    keep = ("cell", "share_429", "achieved_over_cap", "steady_share_429", "steady_achieved_over_cap",
            "first_window_share_429", "first_window_achieved_over_cap", "failed_rows", "server_requests",
            "server_429", "wall_s", "changes", "prompts_per_s")  # fmt: skip

    def show(r: dict[str, Any]) -> dict[str, Any]:
        return {k: r[k] for k in keep if k in r} if "cell" in r or "changes" in r else r

    print(json.dumps(show(result) if "rpm" not in result and "sliding" not in result else
                     {k: show(v) for k, v in result.items()}, indent=1, default=str))  # fmt: skip
