"""Unit tests for the modules under ``.llm.map``: pipeline, engine, bridge, progress and namespaces.

The engine runs here with a Python ``worker`` (no HTTP) and an in-memory store, so each behaviour is
checked at its own module; end-to-end behaviour over HTTP lives in ``test_map.py`` and the reliability
tests.
"""

from __future__ import annotations

import asyncio
import traceback
from typing import Any

import anyio
import polars as pl
import pytest
from pydantic import BaseModel

import polars_llm  # noqa: F401  (registers .llm)
from polars_llm import MapConfig
from polars_llm import exceptions as exc
from polars_llm._bridge import run_async, run_sync, surfaced
from polars_llm._engine.session import execute
from polars_llm._pipeline.pipeline import assemble, per_row, prepare, run, stopped
from polars_llm._progress.bar import Progress, RateMeter, reporting
from polars_llm._progress.stats import RunStats
from polars_llm._request.spec import request_spec


def worker_cfg(worker: Any, **options: Any) -> MapConfig:
    return MapConfig(worker=worker, cache=None, progress=False, **options)


async def _same(prompt: str) -> str:
    return prompt


# --- pipeline -------------------------------------------------------------------------------------------


def test_prepare_takes_unique_non_null_prompts_in_first_seen_order() -> None:
    cfg = worker_cfg(_same)
    p = prepare(pl.Series("q", ["b", None, "a", "b", "c", "a"]), cfg)
    assert p.unique.to_list() == ["b", "a", "c"]
    assert p.keys.to_list() == request_spec(cfg).key_maker().keys(["b", "a", "c"])
    assert p.rows.name == "q" and len(p) == 3


def test_prepare_refuses_a_non_text_column() -> None:
    with pytest.raises(exc.ColumnTypeError, match="Int64"):
        prepare(pl.Series("q", [1, 2]), worker_cfg(_same))


def test_per_row_and_assemble_join_answers_back_in_row_order() -> None:
    cfg = worker_cfg(_same)
    p = prepare(pl.Series("q", ["b", None, "a", "b"]), cfg)
    kb, ka = p.keys.to_list()
    state = pl.DataFrame({"key": [ka, kb], "status": ["failed", "done"], "result": [None, "B"]})
    rows = per_row(p, state)
    assert rows["key"].to_list() == [kb, None, ka, kb]
    out = assemble(p, state, cfg)
    assert out.name == "q"
    assert out.struct.field("result").to_list() == ["B", None, None, "B"]
    assert out.struct.field("status").to_list() == ["done", "null", "failed", "done"]


def test_stopped_restates_with_progress_and_keeps_the_type() -> None:
    cfg = MapConfig(model="m", api_key="k", cache="/tmp/x.duckdb")
    stats = RunStats(total=10, cached=2, done=3, failed=1)
    err = stopped(exc.AuthenticationError("bad key", status=401), stats, cfg)
    assert isinstance(err, exc.AuthenticationError) and err.status == 401
    assert "stopped after 4 of 8 requests (3 done, 1 failed)" in str(err)
    assert "/tmp/x.duckdb" in str(err)
    interrupted = stopped(KeyboardInterrupt(), stats, MapConfig(model="m", api_key="k", cache=None))
    assert isinstance(interrupted, KeyboardInterrupt) and "cache=None" in str(interrupted)


# --- engine ---------------------------------------------------------------------------------------------


def _run_engine(cfg: MapConfig, prompts: list[str]) -> tuple[pl.DataFrame, RunStats]:
    p = prepare(pl.Series(prompts, dtype=pl.String), cfg)
    stats = RunStats()
    state = anyio.run(lambda: execute(cfg, p.keys, p.unique, stats=stats))
    return state, stats


def test_engine_answers_every_key_once_with_a_worker() -> None:
    seen: list[str] = []

    async def echo(prompt: str) -> str:
        seen.append(prompt)
        return prompt.upper()

    state, stats = _run_engine(worker_cfg(echo, concurrency=3), ["a", "b", "c", "d"])
    assert sorted(seen) == ["a", "b", "c", "d"]
    assert sorted(state["result"].to_list()) == ["A", "B", "C", "D"]
    assert (stats.total, stats.done, stats.failed, stats.requests) == (4, 4, 0, 4)


def test_engine_retries_transient_errors_and_fails_row_errors() -> None:
    calls: dict[str, int] = {}

    async def flaky(prompt: str) -> str:
        calls[prompt] = calls.get(prompt, 0) + 1
        if prompt == "transient" and calls[prompt] < 3:
            raise exc.ServerError("busy", status=503)
        if prompt == "bad":
            raise exc.BadRequestError("no", status=400)
        return "ok"

    state, stats = _run_engine(worker_cfg(flaky, max_backoff=0.01), ["transient", "bad"])
    by_status = dict(zip(state["key"], state["status"], strict=True))
    assert sorted(by_status.values()) == ["done", "failed"]
    assert calls == {"transient": 3, "bad": 1}
    assert (stats.done, stats.failed) == (1, 1)


def test_engine_retries_invalid_structured_output_at_most_three_times() -> None:
    class Out(BaseModel):
        n: int

    calls = 0

    async def wrong(prompt: str) -> str:
        nonlocal calls
        calls += 1
        return '{"n": "not a number"}'

    state, _ = _run_engine(worker_cfg(wrong, response_model=Out), ["x"])
    assert calls == 3 and state["status"].to_list() == ["failed"]
    assert "raw output" in state["error"][0]


def test_engine_stops_on_a_fatal_error_after_keeping_what_finished() -> None:
    async def fatal_after_one(prompt: str) -> str:
        if prompt != "first":
            raise exc.AuthenticationError("revoked", status=401)
        return "ok"

    cfg = worker_cfg(fatal_after_one, concurrency=1)
    with pytest.raises(exc.AuthenticationError):
        _run_engine(cfg, ["first", "second", "third"])


# --- bridge ---------------------------------------------------------------------------------------------


def test_run_sync_unwraps_a_single_error_from_task_groups() -> None:
    async def fails() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.sleep, 10)
            raise exc.NotFoundError("nope", status=404)

    with pytest.raises(exc.NotFoundError) as info:
        run_sync(fails)
    assert not isinstance(info.value.__context__, BaseExceptionGroup)


def test_run_sync_works_inside_a_running_event_loop() -> None:
    async def inner() -> int:
        return 7

    async def cell() -> int:  # like a Jupyter cell: a loop is already running on this thread
        return run_sync(inner)

    assert asyncio.run(cell()) == 7


def test_run_async_propagates_cancellation_as_cancelled_error() -> None:
    async def forever() -> None:
        await anyio.sleep(10)

    async def main() -> str:
        task = asyncio.ensure_future(run_async(forever))
        await asyncio.sleep(0.01)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "finished"

    assert asyncio.run(main()) == "cancelled"


def test_surfaced_errors_are_raised_from_the_public_call_with_the_original_as_context() -> None:
    def deep() -> None:
        raise exc.StoreError("locked", path="/x")

    @surfaced
    def public() -> None:
        deep()

    with pytest.raises(exc.StoreError) as info:
        public()
    err = info.value
    assert err.path == "/x" and str(err) == "locked"
    assert err.__suppress_context__ and isinstance(err.__context__, exc.StoreError)
    frames = [f.name for f in traceback.extract_tb(err.__traceback__)]
    assert "deep" not in frames  # the internal frames are in __context__, not in what the user sees
    assert "deep" in [f.name for f in traceback.extract_tb(err.__context__.__traceback__)]


def test_surfaced_keyboard_interrupt_stays_a_keyboard_interrupt() -> None:
    @surfaced
    def public() -> None:
        raise KeyboardInterrupt("stopped after 3 of 9 requests")

    with pytest.raises(KeyboardInterrupt, match="stopped after 3 of 9"):
        public()


# --- progress -------------------------------------------------------------------------------------------


def test_rate_meter_is_a_rolling_requests_per_minute() -> None:
    clock = iter([0.0, 30.0, 90.0, 91.0])
    meter = RateMeter(window=60.0, clock=lambda: next(clock))
    assert meter.rate(0) == 0.0
    assert meter.rate(30) == 60.0  # 30 in 30 s
    assert meter.rate(30) == 0.0  # the first sample left the window: none in the last 60 s
    assert meter.rate(31) == 60.0


class _FakeReporter:
    def __init__(self) -> None:
        self.stats = RunStats()
        self.events: list[str] = []

    def open(self) -> None:
        self.events.append("open")

    def started(self, stats: RunStats) -> None:
        self.events.append("started")

    async def run(self) -> None:
        return None

    def close(self, *, error: bool = False) -> None:
        self.events.append(f"close(error={error})")


def test_reporting_closes_the_display_and_marks_failures() -> None:
    ok = _FakeReporter()
    with reporting(ok):
        pass
    failing = _FakeReporter()
    with pytest.raises(ValueError), reporting(failing):
        raise ValueError("boom")
    assert ok.events == ["open", "close(error=False)"]
    assert failing.events == ["open", "close(error=True)"]


def test_disabled_progress_is_silent(capsys: pytest.CaptureFixture[str]) -> None:
    bar = Progress(RunStats(total=3), enabled=False)
    bar.open()
    bar.update()
    bar.close(error=True)
    assert capsys.readouterr().err == ""


def test_the_pipeline_reports_through_any_reporter() -> None:
    async def echo(prompt: str) -> str:
        return prompt

    cfg = worker_cfg(echo)
    p = prepare(pl.Series(["a", "b"]), cfg)
    reporter = _FakeReporter()
    state = run(p, cfg, reporter)  # type: ignore[arg-type]
    assert reporter.events == ["open", "started", "close(error=False)"]
    assert reporter.stats.done == 2 and state.height == 2


# --- namespaces -----------------------------------------------------------------------------------------


async def _echo(prompt: str) -> str:
    return prompt[::-1]


@pytest.mark.parametrize("form", ["expr", "series", "frame", "lazy"])
def test_each_namespace_forwards_to_the_same_pipeline(form: str) -> None:
    df = pl.DataFrame({"q": ["ab", None, "cd"]})
    options: dict[str, Any] = {"worker": _echo, "cache": None, "progress": False}
    if form == "expr":
        out = df.with_columns(pl.col("q").llm.map(**options).alias("llm")).unnest("llm")
    elif form == "series":
        out = df.with_columns(df["q"].llm.map(**options).alias("llm")).unnest("llm")
    elif form == "frame":
        out = df.llm.map("q", **options)
    else:
        out = df.lazy().llm.map("q", **options).collect()
    assert out["result"].to_list() == ["ba", None, "dc"]
    assert out["status"].to_list() == ["done", "null", "done"]


def test_the_expression_knows_its_dtype_without_running() -> None:
    class Out(BaseModel):
        label: str

    calls: list[str] = []

    async def never(prompt: str) -> str:
        calls.append(prompt)
        return "{}"

    expr = pl.col("q").llm.map(worker=never, response_model=Out, cache=None, progress=False)
    schema = pl.LazyFrame({"q": ["x"]}).select(expr).collect_schema()
    assert schema["q"] == pl.Struct({"result": pl.Struct({"label": pl.String}), "status": pl.String})
    assert calls == []
