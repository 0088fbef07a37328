"""3. Rate limits: the simulator enforces a cap; does the client turn it into finished rows without waste?

Request cap: ``R`` requests per sliding 1 s window (20 ms latency, concurrency 64, so the client could send
~16× the cap). (a) ``rpm_limit`` = 95 % of the cap → achieved ÷ limit and the 429 count; (b) no client
limit → achieved ÷ cap, 429s as a share of requests, final failures.

Token cap: the simulator counts prompt + completion tokens per sliding ``tpm_window`` seconds (a scaled
"per minute" window, so a run takes seconds, not minutes); the cap is set so it allows ``R`` requests/s of
these prompts. (a) ``tpm_limit`` = 95 % of the cap (converted to tokens per minute) → achieved tokens/s ÷
limit and 429s; (b) no client limit → achieved ÷ cap, 429 share, failures.

Achieved rates are counted at the server over the largest whole number of limit windows from the first
request (sampled every 0.1 s): any such stretch admits at most ``k`` windows' worth, so the ratio to the
cap is exact however bursty the client is, and the process start and the tail do not count. A
least-squares steady-state rate and the end-to-end rate (rows ÷ wall time) are reported beside it; the
end-to-end rate stands in when a run is shorter than one window (smoke runs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import MODEL, SimProcess, StatsPoller, make_prompts, run_child, steady_rate, windowed_rate

__all__ = ["run"]

LATENCY = 0.02
CONCURRENCY = 64
CLIENT_SHARE = 0.95


def _tokens_per_request(prefix: str) -> float:
    """Prompt + completion tokens the simulator counts for one of this case's prompts."""
    from polars_llm.sim import count_tokens, expected_text

    sample = make_prompts(2000, prefix)[1000:1020]  # 4-digit indices, like most prompts of a run
    return sum(count_tokens(p) + count_tokens(expected_text(MODEL, p)) for p in sample) / len(sample)


def _case(
    name: str, sim: SimProcess, n: int, options: dict[str, Any], workdir: Path, prefix: str, window: float
) -> dict[str, Any]:
    sim.reset()
    with StatsPoller(sim, 0.1) as poller:
        res = run_child(
            "_loops",
            {
                "arm": "map_aiohttp",
                "url": sim.url,
                "n": n,
                "concurrency": CONCURRENCY,
                "prefix": prefix,
                "options": {"cache": str(workdir / f"rate-{name}.duckdb"), **options},
            },
            sim=sim,
        )
    stats = sim.stats()
    requests = stats["requests"]
    r429 = int(stats["status_counts"].get("429", 0))
    res.update(
        {
            "case": name,
            "server_requests": requests,
            "server_429": r429,
            "share_429": round(r429 / requests, 4) if requests else None,
            "failed_rows": res.get("errors"),
            "windowed_ok_per_s": _round(windowed_rate(poller.series("ok"), window)),
            "windowed_tokens_per_s": _round(windowed_rate(poller.series("tokens"), window)),
            "steady_ok_per_s": _round(steady_rate(poller.series("ok"), skip=window)),
            "steady_tokens_per_s": _round(steady_rate(poller.series("tokens"), skip=window)),
            "window_s": window,
            "server_tokens": stats["tokens_in"] + stats["tokens_out"],
        }
    )
    if res.get("wall_s"):
        res["e2e_tokens_per_s"] = round(res["server_tokens"] / res["wall_s"], 1)
    return res


def _round(x: float | None) -> float | None:
    return round(x, 1) if x is not None else None


def _ratio(a: float | None, b: float) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def run(scale: dict[str, Any], workdir: Path) -> dict[str, Any]:
    cap = scale["rate_cap"]
    seconds = scale["rate_seconds"]
    tpm_seconds, tpm_window = scale["tpm_seconds"], scale["tpm_window"]
    out: dict[str, Any] = {
        "params": {
            "cap_per_s": cap,
            "window_s": 1.0,
            "latency": LATENCY,
            "concurrency": CONCURRENCY,
            "client_share": CLIENT_SHARE,
        }
    }
    targets: list[dict[str, Any]] = []

    with SimProcess(latency=LATENCY, rate_limit=cap, window=1.0) as sim:
        limit = CLIENT_SHARE * cap
        a = _case("rpm_95", sim, int(limit * seconds), {"rpm_limit": limit * 60}, workdir, "rpm-a", 1.0)
        b = _case("rpm_none", sim, int(cap * seconds), {}, workdir, "rpm-b", 1.0)
    a["e2e_over_limit"] = _ratio(a.get("prompts_per_s"), limit)
    a["achieved_over_limit"] = _ratio(a["windowed_ok_per_s"], limit) or a["e2e_over_limit"]
    b["e2e_over_cap"] = _ratio(b.get("prompts_per_s"), cap)
    b["achieved_over_cap"] = _ratio(b["windowed_ok_per_s"], cap) or b["e2e_over_cap"]
    out["rpm"] = {"with_limit": a, "without_limit": b}
    targets += [
        _t("rpm_limit at 95 % of cap: achieved ÷ limit", a["achieved_over_limit"], ">= 0.97", 0.97),
        _t("rpm_limit at 95 % of cap: 429 responses", a["server_429"], "0", 0, op="eq"),
        _t("no client limit: achieved ÷ cap", b["achieved_over_cap"], ">= 0.85", 0.85),
        _t("no client limit: 429s ÷ requests", b["share_429"], "<= 0.05", 0.05, op="le"),
        _t("no client limit: failed rows", b["failed_rows"], "0", 0, op="eq"),
    ]

    per_request = _tokens_per_request("tpm-x")
    token_cap = int(cap * per_request * tpm_window)  # tokens per tpm_window seconds ≈ `cap` requests/s
    cap_per_s = token_cap / tpm_window
    with SimProcess(latency=LATENCY, tpm_limit=token_cap, tpm_window=tpm_window) as sim:
        limit_tps = CLIENT_SHARE * cap_per_s
        n_a = int(limit_tps / per_request * tpm_seconds)
        n_b = int(cap_per_s / per_request * tpm_seconds)
        ta = _case("tpm_95", sim, n_a, {"tpm_limit": limit_tps * 60}, workdir, "tpm-a", tpm_window)
        tb = _case("tpm_none", sim, n_b, {}, workdir, "tpm-b", tpm_window)
    ta["e2e_over_limit"] = _ratio(ta.get("e2e_tokens_per_s"), limit_tps)
    ta["achieved_over_limit"] = _ratio(ta["windowed_tokens_per_s"], limit_tps) or ta["e2e_over_limit"]
    tb["e2e_over_cap"] = _ratio(tb.get("e2e_tokens_per_s"), cap_per_s)
    tb["achieved_over_cap"] = _ratio(tb["windowed_tokens_per_s"], cap_per_s) or tb["e2e_over_cap"]
    out["tpm"] = {
        "tokens_per_request": round(per_request, 1),
        "token_cap": token_cap,
        "tpm_window_s": tpm_window,
        "cap_tokens_per_s": round(cap_per_s, 1),
        "with_limit": ta,
        "without_limit": tb,
    }
    targets += [
        _t("tpm_limit at 95 % of cap: achieved ÷ limit", ta["achieved_over_limit"], ">= 0.97", 0.97),
        _t("tpm_limit at 95 % of cap: 429 responses", ta["server_429"], "0", 0, op="eq"),
        _t("no client tpm limit: achieved ÷ cap", tb["achieved_over_cap"], ">= 0.85", 0.85),
        _t("no client tpm limit: 429s ÷ requests", tb["share_429"], "<= 0.05", 0.05, op="le"),
        _t("no client tpm limit: failed rows", tb["failed_rows"], "0", 0, op="eq"),
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
