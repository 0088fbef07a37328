"""A real Ctrl-C stops a set operator at once, and a rerun resumes without paying twice.

A child process runs ``reduce`` (or ``join``) against a slow simulator (real HTTP, real DuckDB file);
once some requests were answered, the simulator holds the rest (so an interrupt that is lost shows as a
run that does not end) and the child gets a real SIGINT. It must end with ``KeyboardInterrupt``, having
kept what it was answered; a rerun to completion then sends exactly what a fresh run sends minus what
the cache kept, each prompt once. No sleeps: every wait is on observable state, with a deadline.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

import polars_llm  # noqa: F401  (registers the namespaces)
from polars_llm import sim

SRC = str(Path(__file__).resolve().parents[2] / "src")
CONCURRENCY = 4  # the child's

# the child's work and the parent's rerun: the same call (``frames`` builds the same inputs in both)
SCRIPT = textwrap.dedent(
    """
    import sys
    import polars as pl
    import polars_llm

    def frames():
        names = [f"prod{chr(97 + g // 26)}{chr(97 + g % 26)}" for g in range(30)]  # letters: summaries differ
        reviews = pl.DataFrame(
            [(name, f"review {i} of {name}: the lid and the handle are poor ({i})")
             for name in names for i in range(16)],
            schema=["product", "review"], orient="row",
        )
        ads = pl.DataFrame({"ad": [f"ad {i}: job number {i}, ref #t{i}" for i in range(40)]})
        cvs = pl.DataFrame({"cv": [f"cv: person for job {i}, ref #t{i}" for i in range(40)]})
        return reviews, ads, cvs

    def call(operator, url, cache):
        reviews, ads, cvs = frames()
        opts = dict(base_url=url, api_key="k", cache=cache, progress=False, concurrency=4)  # CONCURRENCY
        if operator == "reduce":
            return reviews.llm.reduce("review", "Summarise the complaints", "m", by="product",
                                      max_input_tokens=100, **opts)
        if operator == "reduce in agg":  # runs on a Polars compute thread, where no SIGINT arrives
            summary = pl.col("review").llm.reduce("Summarise the complaints", "m", max_input_tokens=100,
                                                  **opts)
            return reviews.group_by("product", maintain_order=True).agg(summary)
        return ads.llm.join(cvs, "{left.ad} is a good match for {right.cv}", "m", k=3, embed_model="e",
                            **opts)

    if __name__ == "__main__":
        print("started", flush=True)
        try:
            call(sys.argv[1], sys.argv[2], sys.argv[3])
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        else:
            print("finished", flush=True)
    """
)


def _wait_for(predicate: Any, what: str, deadline_s: float = 60.0) -> None:
    """Wait (on ``predicate``, polled) until it holds; fail after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    tick = threading.Event()
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"gave up waiting for {what}")
        tick.wait(0.005)


def _chat_answers(server: sim.SimServer) -> int:
    stats = server.stats(per_prompt=False)
    return int(stats["ok"]) - int(stats["embedding_requests"])


def _interrupted(argv: list[str], server: sim.SimServer, trigger: int) -> tuple[str, str, int]:
    """Run the child until ``trigger`` chat answers, hold the rest, send SIGINT once every slot holds a
    held request (so each answer given was taken in): its stdout, stderr and the answers given."""
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=env)  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "started"
        _wait_for(lambda: _chat_answers(server) >= trigger or child.poll() is not None, "answers")
        server.configure(latency=30.0)  # the rest is held: a lost interrupt never finishes
        _wait_for(lambda: server.stats(per_prompt=False)["in_flight"] >= CONCURRENCY, "held slots")
        answered = _chat_answers(server)
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    return out, err, answered


@pytest.mark.parametrize("operator", ["reduce", "reduce in agg", "join"])
def test_real_sigint_stops_a_set_operator_and_the_rerun_pays_nothing_twice(
    operator: str, tmp_path: Path
) -> None:
    script = tmp_path / "child.py"
    script.write_text(SCRIPT)
    namespace: dict[str, Any] = {}
    exec(compile(SCRIPT, str(script), "exec"), namespace)  # the same call, for the parent's reruns
    call = namespace["call"]
    cache = tmp_path / "c.duckdb"
    trigger = 20
    with sim.serve(latency=0.02) as server:
        out, err, answered = _interrupted(
            [sys.executable, str(script), operator, str(server), str(cache)], server, trigger
        )
        assert out.strip() == "interrupted", err
        server.configure(latency=0.0)
        with duckdb.connect(str(cache), read_only=True) as con:
            (kept,) = con.execute(
                "select count(*) from requests where status = 'done' and model = 'm'"
            ).fetchone()
        assert kept >= answered >= trigger  # every answer it was given before the interrupt was kept

        server.reset()
        resumed = call(operator, str(server), cache)  # the rerun, to completion
        again = server.stats()
        server.reset()
        fresh = call(operator, str(server), tmp_path / "fresh.duckdb")  # the whole call from nothing
        whole = server.stats()
    assert resumed.equals(fresh)
    if operator == "reduce":
        assert resumed["status"].to_list() == ["done"] * 30
    elif operator == "reduce in agg":
        assert resumed.height == 30 and resumed["review"].null_count() == 0
    else:
        assert sorted(resumed.rows()) == sorted(fresh.rows()) and resumed.height == 40
    chat = lambda s: s["requests"] - s["embedding_requests"]  # noqa: E731
    assert chat(again) == chat(whole) - kept  # nothing the cache kept was sent again
    assert set(again["per_prompt"].values()) == {1}  # and nothing twice in the rerun
