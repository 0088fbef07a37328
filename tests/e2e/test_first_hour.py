"""What got in a new user's way in the first hour (issue 27), each fixed and held here.

Against the simulator over real HTTP where a run is involved; the CLI in-process through ``main(argv)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
import pytest
from pydantic import BaseModel

import polars_llm
from polars_llm import cli, sim
from polars_llm._batch.progress import say
from polars_llm._engine.run import RunStats
from polars_llm._pipeline.pipeline import stopped
from polars_llm._progress.bar import Progress, _widget_tqdm
from polars_llm.exceptions import (
    AuthenticationError,
    BudgetExceededError,
    ColumnTypeError,
    ConfigError,
    ProviderWaitError,
)

KEY = "sk-first-hour"


def _frame(*prompts: str) -> pl.DataFrame:
    return pl.DataFrame({"p": list(prompts)})


# --- 2. resume advice only where resuming helps ---------------------------------------------------------


def test_a_config_error_gets_no_progress_or_resume_advice() -> None:
    error = ConfigError("dimensions: option(s) of llm.embed only, not of llm.map")
    cfg = polars_llm.MapConfig(model="m", api_key="k", cache="x.duckdb")
    assert stopped(error, RunStats(total=3), cfg) is error


def test_a_budget_stop_says_how_to_continue_once(sim_server: sim.SimServer, tmp_path: Path) -> None:
    opts = {"base_url": sim_server, "api_key": KEY, "cache": tmp_path / "c.duckdb", "progress": False}
    rows = _frame(*(f"question {i}" for i in range(200)))
    est = rows.llm.estimate("p", "sim/echo", max_tokens=32, **opts)  # priced by the simulator's model list
    with pytest.raises(BudgetExceededError) as stop:
        rows.llm.map("p", "sim/echo", max_tokens=32, max_cost=est.cost_expected / 10, **opts)  # type: ignore[operator]
    text = str(stop.value)
    assert "Raise max_cost and run again to continue" in text
    assert "run it again to continue" not in text
    assert f"finished rows are kept in the cache {tmp_path / 'c.duckdb'}" in text


def test_with_cache_none_a_long_wait_promises_nothing_saved(sim_server: sim.SimServer) -> None:
    with pytest.raises(ProviderWaitError) as stop:
        _frame("[[retry_after:100000000]]").llm.map(
            "p", "m", base_url=sim_server, api_key=KEY, cache=None, progress=False
        )
    text = str(stop.value)
    assert "saved" not in text and "kept in the cache" not in text
    assert "with cache=None nothing finished was kept" in text


def test_a_rejected_key_says_fix_the_cause(tmp_path: Path) -> None:
    with sim.serve(api_key="sk-the-right-one") as url, pytest.raises(AuthenticationError) as stop:
        _frame("a", "b").llm.map("p", "m", base_url=url, api_key="sk-wrong", cache=tmp_path / "c.duckdb")
    assert "fix the cause, then run it again to continue" in str(stop.value)


def test_cli_errors_name_flags_not_keyword_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    _frame("a").write_csv(tmp_path / "in.csv")
    (tmp_path / "file").write_text("not a directory")
    code = cli.main(
        ["run", str(tmp_path / "in.csv"), "--column", "p", "--model", "m", "-o", str(tmp_path / "o.csv"),
         "--cache", str(tmp_path / "file" / "c.duckdb"), "--base-url", "http://127.0.0.1:9/v1"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert "--cache <other path>" in err and "cache=<other path>" not in err


# --- 3. run --help ----------------------------------------------------------------------------------------


def test_run_help_offers_no_embed_only_flags_and_no_empty_tuple(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--dimensions" not in text and "--batch-size" not in text
    assert "--include" in text and "(default: ())" not in text
    assert cli.main(["embed", "--help"]) == 0
    assert "--dimensions" in capsys.readouterr().out


# --- 4. include= for embeddings -------------------------------------------------------------------------


def test_embed_takes_include_for_per_row_tokens_and_cost(sim_server: sim.SimServer, tmp_path: Path) -> None:
    docs = pl.DataFrame({"text": ["a red kettle", "a blue lamp", None]})
    opts = {"base_url": sim_server, "api_key": KEY, "cache": tmp_path / "c.duckdb", "progress": False}
    first = docs.llm.embed("text", "e", 8, include=("usage", "cached"), **opts)
    assert first.columns == ["text", "result", "status", "tokens_in", "tokens_out", "cost", "cached"]
    assert first["tokens_in"].to_list()[:2] == [3, 2] and first["cached"].to_list() == [False, False, None]
    assert all(c is not None and c > 0 for c in first["cost"].to_list()[:2])
    again = docs.with_columns(pl.col("text").llm.embed("e", 8, include=("cached",), **opts).alias("x"))
    assert again.unnest("x")["cached"].to_list() == [True, True, None]
    with pytest.raises(ConfigError, match="mode: option"):
        docs.llm.embed("text", "e", 8, mode="batch", **opts)


# --- 7. notebooks: notes on stdout, a finished bar that says what it did, a bar that keeps its width -------


def test_batch_notes_go_to_stdout_in_a_notebook_and_stderr_in_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from polars_llm._progress import bar

    say("submitted batch b1: 3 requests", show=True)
    out = capsys.readouterr()
    assert "submitted batch b1" in out.err and out.out == ""
    monkeypatch.setattr(bar, "in_notebook", lambda: True)
    say("batch b1 completed", show=True)
    out = capsys.readouterr()
    assert "batch b1 completed" in out.out and out.err == ""


def test_a_finished_bar_counts_cached_rows_and_drops_the_live_pace(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stats = RunStats(total=4, cached=1, done=3, pacing=lambda: (61_440.0, "learning", 0.0, ""))
    bar = Progress(stats)
    bar.open()
    bar.update()
    assert "pace≤61,440/min (learning)" in capsys.readouterr().err  # while running
    bar.close()
    last = capsys.readouterr().err.rsplit("\r", 1)[-1]
    assert "done=4 (1 cached) failed=0" in last and "pace" not in last


def test_the_widget_bar_keeps_a_minimum_width() -> None:
    pytest.importorskip("ipywidgets")
    bar = _widget_tqdm()(total=3, dynamic_ncols=True, file=sys.stderr)
    try:
        assert bar.container.children[1].layout.min_width == "40%"
        assert bar.container.layout.flex_flow == "row wrap"
    finally:
        bar.close()


# --- 8. smaller ones ------------------------------------------------------------------------------------


def test_a_struct_typo_lists_the_fields_without_a_cast_hint() -> None:
    rows = pl.DataFrame({"prompt": ["hi"], "sistem": ["Be brief."]})
    with pytest.raises(ColumnTypeError) as refused:
        rows.llm.map(pl.struct("prompt", "sistem"), "m", api_key="k", cache=None, progress=False)
    text = str(refused.value)
    assert "'sistem'" in text and "prompt, system, images, messages, model" in text
    assert "cast it first" not in text


def test_the_estimate_says_why_there_is_no_maximum_and_labels_the_batch_price(
    sim_server: sim.SimServer, tmp_path: Path
) -> None:
    opts = {"base_url": sim_server, "api_key": KEY, "cache": tmp_path / "c.duckdb"}
    est = _frame("a", "b").llm.estimate("p", "m", price={"m": (0.15, 0.6)}, **opts)
    assert "unknown at most" not in str(est) and "(no maximum without max_tokens)" in str(est)
    assert "no maximum without max_tokens" in est._repr_html_()
    batch = _frame("a", "b").llm.estimate("p", "m", price=(0.15, 0.6), mode="batch", max_tokens=8, **opts)
    assert "$0.075 in / $0.3 out per 1M tokens (option, halved for batch mode)" in str(batch)


class Label(BaseModel):
    word: str


def test_a_failed_rows_result_is_empty_in_csv_not_the_text_null(
    sim_server: sim.SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", KEY)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "labels.py").write_text(
        "from pydantic import BaseModel\nclass Label(BaseModel):\n    word: str\n"
    )
    _frame("good", "[[status:400]]").write_csv(tmp_path / "in.csv")
    code = cli.main(
        ["run", "in.csv", "--column", "p", "--model", "m", "-o", "out.csv", "--schema", "labels.py:Label",
         "--base-url", str(sim_server), "--quiet"]
    )  # fmt: skip
    assert code == 0
    lines = (tmp_path / "out.csv").read_text().splitlines()
    assert lines[0] == "p,result,status"
    assert lines[2] == "[[status:400]],,failed"
    assert lines[1].startswith('good,"{') and lines[1].endswith(",done")
