"""Cost: estimate before the run (no completion request), a budget during it, per-row details after.

All against the simulator over HTTP (it serves a priced model list and reports ``usage.cost``, or not),
with real DuckDB files. The simulator's ``cost`` counter is the ground truth of what was paid.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import polars_llm
from polars_llm import BudgetExceededError, ConfigError, Estimate, sim
from polars_llm.cli import main as cli_main

MODEL = "sim/echo"  # listed (and priced) by the simulator's /v1/models
PRICE_IN, PRICE_OUT = 1e-7, 4e-7  # the simulator's default USD per token


@pytest.fixture
def server() -> Iterator[sim.SimServer]:
    with sim.serve() as s:
        yield s


def opts(server: str, cache: Path | None, **extra: Any) -> dict[str, Any]:
    return {"base_url": server, "api_key": "k", "cache": cache, "progress": False, **extra}


def frame(n: int, prefix: str = "review") -> pl.DataFrame:
    return pl.DataFrame({"q": [f"{prefix} {i}: the kettle arrived late but works" for i in range(n)]})


# --- estimate -------------------------------------------------------------------------------------------


def test_estimate_sends_no_completion_and_prices_from_the_provider_list(
    server: sim.SimServer, cache_path: Path
) -> None:
    df = pl.DataFrame({"q": ["a b c d", "a b c d", None, "efgh ijkl"]})
    est = df.llm.estimate("q", MODEL, **opts(server, cache_path, max_tokens=50))
    assert server.stats()["requests"] == 0
    assert isinstance(est, Estimate)
    assert (est.rows, est.null_rows, est.unique_prompts, est.cached, est.to_send) == (4, 1, 2, 0, 2)
    assert est.price_source == "provider"
    assert est.price_in == pytest.approx(PRICE_IN * 1e6) and est.price_out == pytest.approx(PRICE_OUT * 1e6)
    assert est.output_tokens_max == 100  # 2 requests × max_tokens
    assert est.cost_expected is not None and 0 < est.cost_expected <= est.cost_max  # type: ignore[operator]
    assert "Estimate for sim/echo" in str(est) and "<table>" in est._repr_html_()
    # the list was kept in the store with its date: a changed list is not fetched again
    with duckdb.connect(str(cache_path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM model_prices WHERE model = ?", [MODEL]).fetchall()[0][0] == 1
    server.configure(prompt_price=1.0)
    again = df.llm.estimate("q", MODEL, **opts(server, cache_path, max_tokens=50))
    assert again.price_in == est.price_in


def test_estimate_with_a_price_option_and_its_arithmetic(server: sim.SimServer) -> None:
    s = pl.Series("q", ["x" * 400])  # 400 characters: 100 tokens at 4 characters per token, + framing
    est = s.llm.estimate(MODEL, **opts(server, None, price=(2.0, 10.0), max_tokens=20))
    assert est.price_source == "option" and (est.price_in, est.price_out) == (2.0, 10.0)
    assert est.input_tokens == 108 and est.output_tokens == 20
    assert est.cost_expected == pytest.approx((108 * 2.0 + 20 * 10.0) / 1e6)
    free = polars_llm.estimate(s, model=MODEL, **opts(server, None, price={MODEL: (0.0, 0.0)}))
    assert free.cost_expected == 0.0


def test_estimate_offline_says_unknown(unused_port_url: str) -> None:
    est = pl.LazyFrame({"q": ["hi"]}).llm.estimate(
        "q", "m", base_url=unused_port_url, api_key="k", cache=None
    )
    assert est.price_source == "unknown" and est.cost_expected is None and est.cost_max is None
    assert "unknown" in str(est)


@pytest.fixture
def unused_port_url() -> str:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_estimate_learns_from_the_store_and_counts_cached_rows(
    server: sim.SimServer, cache_path: Path
) -> None:
    done = frame(40)
    done.llm.map("q", MODEL, **opts(server, cache_path))
    stored = server.stats()
    cached = done.llm.estimate("q", MODEL, **opts(server, cache_path))
    assert (cached.cached, cached.to_send, cached.input_tokens) == (40, 0, 0)
    new = frame(40, prefix="other")
    est = new.llm.estimate("q", MODEL, **opts(server, cache_path))
    assert "learned from 40 earlier answers" in est.basis
    assert server.stats()["requests"] == stored["requests"]  # still no completion request
    new.llm.map("q", MODEL, **opts(server, cache_path))
    actual = server.stats()["cost"] - stored["cost"]
    assert est.cost_expected == pytest.approx(actual, rel=0.25)


# --- budget ---------------------------------------------------------------------------------------------


def test_budget_stops_before_going_over_keeps_the_frame_and_resumes(
    server: sim.SimServer, cache_path: Path
) -> None:
    df = frame(600)
    options = opts(server, cache_path, max_tokens=32, concurrency=16)
    est = df.llm.estimate("q", MODEL, **options)
    budget = est.cost_expected / 4  # type: ignore[operator]  (no history: the estimate assumes max_tokens)
    with pytest.raises(BudgetExceededError) as info:
        df.llm.map("q", MODEL, max_cost=budget, **options)
    err = info.value
    paid = server.stats()["cost"]
    assert paid <= budget  # spent ≤ max_cost: the simulator's own count of what it charged
    assert err.spent == pytest.approx(paid) and err.budget == budget
    assert "max_cost reached" in str(err) and f"{err.rows_left:,} rows were not sent" in str(err)
    out = err.frame
    assert out.columns == ["q", "result", "status"] and out.height == 600
    statuses = out["status"].value_counts()
    n_done = int(out["status"].eq("done").sum())
    assert set(statuses["status"]) == {"done", "pending"} and n_done + err.rows_left == 600
    assert out.filter(pl.col("status") == "done")["result"].to_list() == [
        sim.expected_text(MODEL, p) for p in out.filter(pl.col("status") == "done")["q"]
    ]
    with duckdb.connect(str(cache_path), read_only=True) as con:
        counts = dict(con.execute("SELECT status, count(*) FROM requests GROUP BY ALL").fetchall())
    assert counts == {"done": n_done, "pending": 600 - n_done}
    # the same cell again spends nothing more: the budget counts what earlier runs spent on these rows
    before = server.stats()["requests"]
    with pytest.raises(BudgetExceededError):
        df.llm.map("q", MODEL, max_cost=budget, **options)
    assert server.stats()["requests"] - before <= 1  # at most one request fits in what is left
    # a larger budget continues and pays nothing twice
    server.reset()
    out = df.llm.map("q", MODEL, max_cost=est.cost_max, **options)
    assert out["status"].to_list() == ["done"] * 600
    assert server.stats()["requests"] <= 600 - n_done


@pytest.mark.parametrize("form", ["expression", "lazy expression", "streamed lazy frame"])
def test_a_budget_stop_carries_the_output_as_it_stands_in_every_form(
    server: sim.SimServer, cache_path: Path, form: str
) -> None:
    """``stop.frame`` was ``None`` when the map ran as an expression (Polars raises a new exception of
    the same type, without its attributes) or streamed. Varied prompt lengths: varied reservations."""
    server.configure(report_cost=False)
    df = pl.DataFrame({"q": [f"review {i}: " + "late " * (i % 37) for i in range(300)]})
    options = opts(server, cache_path, price=(1000, 1000), max_tokens=64, concurrency=8, max_cost=0.5)
    with pytest.raises(BudgetExceededError) as info:
        if form == "expression":
            df.with_columns(pl.col("q").llm.map(model=MODEL, **options).alias("llm"))
        elif form == "lazy expression":
            df.lazy().with_columns(pl.col("q").llm.map(model=MODEL, **options).alias("llm")).collect()
        else:
            df.lazy().llm.map("q", MODEL, **options).collect()
    stop = info.value
    assert stop.budget == 0.5 and 0 < stop.spent <= 0.5 and stop.rows_left > 0
    sent = server.stats()["requests"]
    out = stop.frame.collect() if isinstance(stop.frame, pl.LazyFrame) else stop.frame
    assert server.stats()["requests"] == sent  # the output as it stands comes from the cache alone
    if form == "lazy expression":  # the chunks of a streamed query, in the order Polars handed them over
        assert out.height == 300 and sorted(out["q"]) == sorted(df["q"])
    else:
        assert out.height == 300 and out["q"].to_list() == df["q"].to_list()
    done = out.filter(pl.col("status") == "done")
    assert done.height == sent and set(out["status"]) == {"done", "pending"}
    assert done["result"].to_list() == [sim.expected_text(MODEL, q) for q in done["q"]]


def test_small_budgets_print_with_their_digits(server: sim.SimServer, cache_path: Path) -> None:
    server.configure(report_cost=False)
    options = opts(server, cache_path, price=(1, 1), max_tokens=16, max_cost=0.0002)
    with pytest.raises(BudgetExceededError) as info:
        frame(200).llm.map("q", MODEL, **options)
    assert "of the $0.000200 budget" in str(info.value)  # was "$0.0000 spent of the $0.0000 budget"


def test_budget_with_costs_the_provider_does_not_report(server: sim.SimServer, cache_path: Path) -> None:
    server.configure(report_cost=False)
    price = (PRICE_IN * 1e6, PRICE_OUT * 1e6)
    df = frame(200)
    budget = 0.0005
    with pytest.raises(BudgetExceededError):
        df.llm.map("q", MODEL, max_cost=budget, **opts(server, cache_path, price=price, max_tokens=32))
    assert server.stats()["cost"] <= budget
    with duckdb.connect(str(cache_path), read_only=True) as con:
        tokens_in, tokens_out, cost = con.execute(
            "SELECT sum(tokens_in), sum(tokens_out), sum(cost) FROM requests WHERE status = 'done'"
        ).fetchall()[0]
    assert cost == pytest.approx((tokens_in * price[0] + tokens_out * price[1]) / 1e6)


def test_max_cost_needs_a_price_and_a_bound_before_any_request(server: sim.SimServer) -> None:
    df = frame(3)
    with pytest.raises(ConfigError, match="needs a price"):
        df.llm.map("q", "unlisted/model", max_cost=1.0, **opts(server, None, max_tokens=10))
    server.configure(max_output=None)
    with pytest.raises(ConfigError, match="max_tokens"):
        df.llm.map("q", MODEL, max_cost=1.0, **opts(server, None))
    assert server.stats()["requests"] == 0


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"max_cost": 0}, "max_cost"),
        ({"max_cost": -1.0}, "max_cost"),
        ({"max_cost": "ten"}, "max_cost"),
        ({"price": (1.0,)}, "price"),
        ({"price": (-1.0, 2.0)}, "price"),
        ({"price": "cheap"}, "price"),
        ({"price": {"m": (1.0, None)}}, "price"),
        ({"include": ("error", "bogus")}, "bogus"),
        ({"include": "usage,nope"}, "nope"),
    ],
)
def test_bad_cost_options_are_config_errors(
    server: sim.SimServer, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        frame(2).llm.map("q", MODEL, **opts(server, None), **options)
    assert server.stats()["requests"] == 0


# --- include --------------------------------------------------------------------------------------------


def test_include_adds_typed_details_in_every_form(server: sim.SimServer, cache_path: Path) -> None:
    server.configure(reasoning_ratio=0.5, cached_ratio=0.25)
    fine = "a fine kettle that arrived on time"
    df = pl.DataFrame({"q": [fine, "[[status:400]]", None, fine]})
    include = ("error", "error_kind", "attempts", "usage", "tokens_reasoning", "tokens_cached", "cached")
    out = df.llm.map("q", MODEL, include=include, **opts(server, cache_path))
    assert out.schema == pl.Schema(
        {
            "q": pl.String,
            "result": pl.String,
            "status": pl.String,
            "error": pl.String,
            "error_kind": pl.String,
            "attempts": pl.Int64,
            "tokens_in": pl.Int64,
            "tokens_out": pl.Int64,
            "cost": pl.Float64,
            "tokens_reasoning": pl.Int64,
            "tokens_cached": pl.Int64,
            "cached": pl.Boolean,
        }
    )
    good, bad, null = out.row(0, named=True), out.row(1, named=True), out.row(2, named=True)
    assert good["status"] == "done" and good["error"] is None and good["attempts"] == 1
    assert (
        good["tokens_reasoning"] == good["tokens_out"] // 2
        and good["tokens_cached"] == good["tokens_in"] // 4
    )
    assert good["cost"] == pytest.approx(good["tokens_in"] * PRICE_IN + good["tokens_out"] * PRICE_OUT)
    assert good["cached"] is False
    assert bad["status"] == "failed" and bad["error_kind"] == "bad_request" and "400" in bad["error"]
    assert null["status"] == "null" and null["tokens_in"] is None and null["cached"] is None
    # rows answered from the cache report what the store holds
    again = df.llm.map("q", MODEL, include=include, **opts(server, cache_path))
    assert again["cached"].to_list() == [True, False, None, True]
    assert again["tokens_in"][0] == good["tokens_in"]
    # the expression form knows the struct before any request
    expr = pl.col("q").llm.map(MODEL, include=("usage",), **opts(server, None))
    dtype = pl.LazyFrame({"q": ["x"]}).select(expr).collect_schema()["q"]
    assert dtype == pl.Struct(
        {
            "result": pl.String,
            "status": pl.String,
            "tokens_in": pl.Int64,
            "tokens_out": pl.Int64,
            "cost": pl.Float64,
        }
    )


def test_include_clashing_with_an_input_column_is_a_config_error(server: sim.SimServer) -> None:
    df = pl.DataFrame({"q": ["a"], "cost": [1.0]})
    with pytest.raises(ConfigError, match="cost"):
        df.llm.map("q", MODEL, include=("usage",), **opts(server, None))
    with pytest.raises(ConfigError, match="cost"):
        df.lazy().llm.map("q", MODEL, include=("cost",), **opts(server, None))
    assert server.stats()["requests"] == 0


def test_a_cache_of_release_0_1_gains_the_new_usage_columns(tmp_path: Path) -> None:
    golden = Path(__file__).resolve().parents[1] / "request" / "test_golden_cache.py"
    spec = importlib.util.spec_from_file_location("golden_cache_schema", golden)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # (not imported by name: it lives in another test folder)
    SCHEMA_V2 = module.SCHEMA_V2

    path = tmp_path / "old.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute(SCHEMA_V2)
    with polars_llm._store.store.Store.open(path) as store:
        assert store.summary()["tokens_reasoning"] == 0
    with duckdb.connect(str(path), read_only=True) as con:
        cols = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns").fetchall()}
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"tokens_reasoning", "tokens_cached"} <= cols and "model_prices" in tables


# --- CLI and status ---------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: sim.SimServer) -> sim.SimServer:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLARS_LLM_BASE_URL", server)
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-cost")
    frame(300).write_parquet("in.parquet")
    return server


def test_cli_estimate_run_with_budget_and_status(
    cli_env: sim.SimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli_main(
            [
                "estimate",
                "in.parquet",
                "--column",
                "q",
                "--model",
                MODEL,
                "--price",
                "0.1",
                "0.4",
                "--max-tokens",
                "32",
            ]
        )
        == 0
    )
    shown = capsys.readouterr().out
    assert "to send: 300" in shown and "(option)" in shown and cli_env.stats()["requests"] == 0
    code = cli_main(
        [
            "run",
            "in.parquet",
            "--column",
            "q",
            "--model",
            MODEL,
            "-o",
            "out.parquet",
            "--quiet",
            "--max-tokens",
            "32",
            "--max-cost",
            "0.0004",
            "--include",
            "error,usage",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "max_cost reached" in err
    out = pl.read_parquet("out.parquet")
    assert out.columns == ["q", "result", "status", "error", "tokens_in", "tokens_out", "cost"]
    assert set(out["status"]) == {"done", "pending"} and cli_env.stats()["cost"] <= 0.0004
    assert cli_main(["status", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cost"] == pytest.approx(cli_env.stats()["cost"])
    assert summary["cost_by_model"][MODEL] == pytest.approx(summary["cost"])
    assert list(summary["cost_by_day"].values()) == [pytest.approx(summary["cost"])]


def test_status_says_unknown_when_no_cost_is_known(
    cli_env: sim.SimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    cli_env.configure(report_cost=False)
    assert (
        cli_main(["run", "in.parquet", "--column", "q", "--model", "unlisted/m", "-o", "o.parquet", "-q"])
        == 0
    )
    capsys.readouterr()
    assert cli_main(["status"]) == 0
    text = capsys.readouterr().out
    assert "cost: unknown" in text and "$0.000000" not in text


def test_budget_reservations_settle_and_refuse_what_cannot_fit() -> None:
    """Unit: a reservation that does not fit waits for requests in flight, then fits or exhausts."""
    import anyio

    from polars_llm._cost.budget import Budget

    async def scenario() -> list[object]:
        budget = Budget(limit=1.0, spent=0.25)
        seen: list[object] = [await budget.reserve(0.5)]  # 0.75 committed
        async with anyio.create_task_group() as tg:

            async def waiter() -> None:
                seen.append(await budget.reserve(0.5))  # must wait: 0.25 + 0.5 + 0.5 > 1

            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            seen.append(len(seen))  # the waiter has not returned yet
            budget.settle(0.5, 0.125)  # the first request cost less than reserved: room for the second
        seen.append(budget.try_reserve(0.5))  # 0.375 + 0.5 reserved + 0.5 > 1: refused, no waiting
        seen.append(budget.exhausted)
        return seen

    assert anyio.run(scenario) == [True, 1, True, False, True]


# --- the budget's property: it always lets a request go or ends the run ---------------------------------

_amounts = st.floats(min_value=1e-7, max_value=0.2, allow_nan=False, allow_infinity=False)
_job = st.tuples(
    _amounts,  # the reservation (a request's worst case)
    st.sampled_from(["cheaper", "exact", "unknown", "failed"]),  # how it settles
    st.floats(min_value=0.0, max_value=1.0),  # the share of the reservation it really cost
    st.integers(min_value=0, max_value=3),  # task switches while in flight
)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.floats(min_value=0.0, max_value=2.0),
    spent=st.floats(min_value=0.0, max_value=1.0),
    jobs=st.lists(_job, min_size=1, max_size=60),
    workers=st.integers(min_value=1, max_value=12),
)
def test_budget_always_lets_a_request_go_or_ends_the_run(
    limit: float, spent: float, jobs: list[tuple[float, str, float, int]], workers: int
) -> None:
    """Random reservation sizes, orders, costs and failures (the float sum of such reservations used
    never to return to 0, so the last workers waited forever): every worker returns, and the run ends
    with nothing reserved and nothing in flight; spent stays within the limit when no answer costs
    more than its reservation."""
    import anyio

    from polars_llm._cost.budget import Budget

    async def scenario() -> tuple[Budget, int, int]:
        budget = Budget(limit, spent)
        queue = list(jobs)
        sent = refused = 0

        async def worker() -> None:
            nonlocal sent, refused
            while queue:
                amount, how, share, switches = queue.pop()
                if not await budget.reserve(amount):
                    refused += 1
                    return
                sent += 1
                for _ in range(switches):
                    await anyio.lowlevel.checkpoint()
                cost = {"cheaper": amount * share, "exact": amount, "unknown": None, "failed": 0.0}[how]
                budget.settle(amount, cost)

        with anyio.fail_after(30):  # a hang fails here instead of at the suite's timeout
            async with anyio.create_task_group() as tg:
                for _ in range(workers):
                    tg.start_soon(worker)
        return budget, sent, refused

    budget, sent, refused = anyio.run(scenario)
    assert budget.in_flight == 0 and budget.reserved == 0
    assert sent + refused <= len(jobs) and (refused == 0 or budget.exhausted)
    if sent + refused < len(jobs) or refused:  # stopped early: only because the next did not fit
        assert budget.exhausted
    assert budget.spent <= max(budget.limit, spent) + 1e-9
