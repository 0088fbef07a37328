"""The API key never leaks: not into the DuckDB files (incl. a WAL left by kill -9), progress output,
logs, reprs of configs and errors, or exception messages and tracebacks."""

from __future__ import annotations

import copy
import dataclasses
import logging
import pickle
import signal
import traceback
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from pydantic import BaseModel

import polars_llm  # noqa: F401  (registers .llm)
from polars_llm import Secret, resolve_config, sim
from polars_llm.exceptions import AuthenticationError, ConfigError, PolarsLLMError
from reliability_utils import MODEL, expect_line, files_containing, prompts, spawn, wait_for

SECRET = "sk-or-SECRET-polars-llm-test-XYZ"
SECRET_BYTES = SECRET.encode()


class Label(BaseModel):
    label: str


def _texts_of_error(err: BaseException) -> list[str]:
    """Everything a user could print about an exception: str, repr, args, attributes, the chain."""
    texts = [str(err), repr(err), repr(err.args), "".join(traceback.format_exception(err))]
    texts += [repr(v) for v in vars(err).values()]
    if err.__cause__ is not None:
        texts += _texts_of_error(err.__cause__)
    if err.__context__ is not None and err.__context__ is not err.__cause__:
        texts += _texts_of_error(err.__context__)
    return texts


def _assert_clean(texts: list[str], where: str) -> None:
    leaks = [t for t in texts if SECRET in t]
    assert not leaks, f"the API key appears in {where}: {leaks[0][:300]!r}"


@pytest.mark.parametrize("transport", ["aiohttp", "openai"])
def test_key_absent_from_store_progress_logs_and_errors(
    transport: str, tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "cache.duckdb"
    frame_prompts = [
        *prompts(20),
        "flaky [[flaky:500:2]]",
        "limited [[flaky429:1]]",
        "bad [[status:400]]",
        "filtered [[content_filter]]",
        "prompt 0",
    ]
    with sim.serve(api_key=SECRET) as server:
        options = {"base_url": server, "api_key": SECRET, "cache": cache, "progress": True}
        out = pl.DataFrame({"p": frame_prompts}).llm.map("p", MODEL, transport=transport, **options)
        structured = pl.DataFrame({"p": ["x", "y [[wrong_schema]]"]}).llm.map(
            "p", MODEL, transport=transport, response_model=Label, max_attempts=2, **options
        )
        assert server.stats()["status_counts"].get("401", 0) == 0  # the key was sent and accepted
    assert out["status"].to_list().count("failed") == 2 and structured["status"][1] == "failed"
    assert list(tmp_path.iterdir()), "the run left no cache file"
    assert files_containing(SECRET_BYTES, tmp_path.rglob("*")) == []
    captured = capfd.readouterr()
    assert "llm" in captured.err  # the progress bar was drawn
    _assert_clean([captured.out, captured.err], "stdout/stderr")
    _assert_clean([r.getMessage() for r in caplog.records] + [caplog.text], "log records")


@pytest.mark.parametrize("transport", ["aiohttp", "openai"])
def test_rejected_key_error_does_not_echo_it(transport: str, cache_path: Path) -> None:
    with sim.serve(api_key="the-right-key") as server:
        with pytest.raises(AuthenticationError) as info:
            pl.DataFrame({"p": prompts(5)}).llm.map(
                "p",
                MODEL,
                base_url=server,
                api_key=SECRET,
                cache=cache_path,
                progress=False,
                transport=transport,
            )
        err = info.value
    assert err.status == 401 and "API key was rejected" in str(err)
    _assert_clean(_texts_of_error(err), "the 401 error")
    assert files_containing(SECRET_BYTES, cache_path.parent.rglob("*")) == []
    # a copy made by pickling (e.g. to send it to another process) is clean too
    _assert_clean([repr(pickle.loads(pickle.dumps(err))), str(pickle.dumps(err))], "a pickled error")


def test_wal_left_by_a_killed_run_holds_no_key(tmp_path: Path) -> None:
    cache = tmp_path / "killed.duckdb"
    with sim.serve(api_key=SECRET, latency=0.02) as server:
        proc = spawn(
            "map", server, str(cache), "2000", "--api-key", SECRET, "--flush-interval", "0.05", "--progress"
        )
        try:
            expect_line(proc, "started")
            wait_for(lambda: server.stats(per_prompt=False)["ok"] >= 50, what="50 answers", timeout=60)
            proc.send_signal(signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    files = list(tmp_path.iterdir())
    assert any(p.name.endswith(".wal") for p in files), files  # the committed batches live in the WAL
    assert files_containing(SECRET_BYTES, files) == []
    _assert_clean([out, err], "the killed child's output")


def test_config_and_error_objects_hide_the_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    direct = resolve_config(model=MODEL, api_key=SECRET, cache=None)
    monkeypatch.setenv("OPENROUTER_API_KEY", SECRET)
    from_env = resolve_config(model=MODEL, cache=None)
    monkeypatch.delenv("OPENROUTER_API_KEY")
    (tmp_path / ".env").write_text(f"OPENROUTER_API_KEY={SECRET}\nMODEL={MODEL}\n")
    from_dotenv = resolve_config(cache=None)
    for cfg in (direct, from_env, from_dotenv):
        assert cfg.api_key is not None and cfg.api_key.get() == SECRET
        texts = [repr(cfg), str(cfg), repr(cfg.api_key), str(cfg.api_key), f"{cfg.api_key}"]
        texts += [repr(dataclasses.asdict(cfg)), repr(vars(cfg)), repr(copy.deepcopy(cfg))]
        _assert_clean(texts, "a MapConfig")
        with pytest.raises(TypeError) as info:
            pickle.dumps(cfg)
        _assert_clean(_texts_of_error(info.value), "the pickling error")
    _assert_clean([repr(Secret(SECRET)), str(Secret(SECRET)), f"{Secret(SECRET)!s}"], "a Secret")
    # option errors raised while a key is configured do not quote it
    bad_options: list[dict[str, Any]] = [
        {"concurrency": 0},
        {"timeout": -1},
        {"no_such_option": 1},
        {"base_url": "ftp://x"},
        {"cache": ""},
    ]
    for options in bad_options:
        with pytest.raises(PolarsLLMError) as err_info:
            resolve_config(model=MODEL, api_key=SECRET, **options)
        assert isinstance(err_info.value, ConfigError)
        _assert_clean(_texts_of_error(err_info.value), f"the error for {options}")
