"""Ray Data on a local cluster (``ray.init(num_cpus=2)``, fractional CPUs per worker, usage stats off): one
global limit, durable and resumable through the hub's cache, a killed worker, the key never written.

Workers are separate processes talking HTTP to the simulator in this process, and to the hub actor that
owns the DuckDB file. Synchronised on the simulator's counters and on Ray's own calls, never on sleeps.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")  # workers use this interpreter, not a new venv
ray = pytest.importorskip("ray")

import polars as pl  # noqa: E402

import polars_llm  # noqa: E402, F401
import polars_llm.ray as plr  # noqa: E402
from polars_llm import sim  # noqa: E402
from reliability_utils import wait_for  # noqa: E402

KEY = "sk-ray-secret-7f3a9"
MODEL = "sim/ray"


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        plr.close()
        ray.shutdown()


def items(n: int, distinct: int) -> list[dict[str, object]]:
    return [{"id": i, "text": f"row {i % distinct}", "tag": "x" * (i % 3)} for i in range(n)]


def mapped(ds: object, server: object, cache: Path, **options: object) -> object:
    """``polars_llm.ray.map`` of the ``text`` column against the simulator, with the test key and cache."""
    return plr.map(ds, "text", MODEL, base_url=server, api_key=KEY, cache=cache, **options)  # type: ignore[arg-type]


def collect(ds: object) -> pl.DataFrame:
    frame = pl.concat([pl.from_arrow(t) for t in ray.get(ds.to_arrow_refs())])  # type: ignore[attr-defined]
    return frame.sort("id")


def test_four_workers_share_one_rate_limit_and_one_cache(cluster: None, tmp_path: Path) -> None:
    cache = tmp_path / "ray.duckdb"
    prompts = [*items(400, 400), {"id": 400, "text": "[[status:400]] bad", "tag": ""}]
    with sim.serve(rate_limit=20, window=1.0) as server:  # 20 requests per second at most
        ds = ray.data.from_items(prompts)
        out = collect(
            mapped(
                ds,
                server,
                cache,
                workers=4,
                num_cpus=0.25,
                batch_size=40,
                rpm_limit=1000,
            )
        )  # 16.7 per second, all together
        stats = server.stats(per_prompt=False)
        assert stats["status_counts"].get("429", 0) == 0  # one budget for the cluster: never over the cap
        hub = plr.stats(cache=cache)
        assert hub["leases"] == stats["requests"] == 401  # every request took a permit from the one hub
        assert hub["writers"] >= 2  # the rows came from several workers
        assert out.columns == ["id", "text", "tag", "result", "status"]  # every input column kept
        assert out["id"].to_list() == list(range(401))
        good = out.filter(pl.col("id") < 400)
        assert good["result"].to_list() == [sim.expected_text(MODEL, t) for t in good["text"]]
        assert out.row(400, named=True)["status"] == "failed"  # errors as data
        # the rerun sends nothing for rows already done
        server.reset()
        again = collect(
            mapped(
                ray.data.from_items(prompts),
                server,
                cache,
                workers=4,
                num_cpus=0.25,
                batch_size=40,
                rpm_limit=1000,
            )
        )
        assert server.stats()["requests"] == 1  # only the failed row is tried again
        assert again.drop("status").equals(out.drop("status"))


def test_a_killed_worker_loses_only_its_unfinished_rows(cluster: None, tmp_path: Path) -> None:
    cache = tmp_path / "kill.duckdb"
    prompts = items(600, 600)
    with sim.serve(latency=0.05) as server:
        ds = mapped(
            ray.data.from_items(prompts),
            server,
            cache,
            workers=2,
            num_cpus=0.25,
            batch_size=50,
            concurrency=4,
        )
        failure: list[BaseException] = []

        def consume() -> None:
            try:
                collect(ds)
            except BaseException as error:  # the job may fail when its worker dies: that is the point
                failure.append(error)

        thread = threading.Thread(target=consume)
        thread.start()
        wait_for(lambda: server.stats(per_prompt=False)["ok"] >= 100, what="100 answers", timeout=120)
        wait_for(
            lambda: bool(plr.stats(cache=cache)["worker_pids"]), what="a worker's first write", timeout=60
        )
        os.kill(plr.stats(cache=cache)["worker_pids"][0], signal.SIGKILL)  # a worker dies mid-run
        thread.join(timeout=300)
        assert not thread.is_alive()
        before = server.stats()["requests"]
        server.reset()
        server.configure(latency=0.0)
        out = collect(
            mapped(
                ray.data.from_items(prompts),
                server,
                cache,
                workers=2,
                num_cpus=0.25,
                batch_size=50,
            )
        )
        resent = server.stats()["per_prompt"]
    assert out["id"].to_list() == list(range(600))  # each row exactly once
    assert out["result"].to_list() == [sim.expected_text(MODEL, p["text"]) for p in prompts]
    assert set(resent.values()) <= {1}
    assert before + len(resent) <= 600 + 2 * 4 + 2 * 50  # paid twice: at most what was in flight or unwritten


def test_the_key_reaches_workers_without_being_written(cluster: None, tmp_path: Path) -> None:
    cache = tmp_path / "secret.duckdb"
    with sim.serve(api_key=KEY) as server:  # the simulator rejects any other key: the workers had this one
        out = collect(
            mapped(
                ray.data.from_items(items(20, 20)),
                server,
                cache,
                workers=2,
                num_cpus=0.25,
            )
        )
        assert set(out["status"]) == {"done"}
    plr.close(cache=cache)
    logs = Path(ray.get_runtime_context().gcs_address and "/tmp/ray/session_latest/logs")
    files = [cache, *[p for p in logs.rglob("*") if p.is_file()]] if logs.exists() else [cache]
    leaked = [str(p) for p in files if KEY.encode() in p.read_bytes()]
    assert leaked == []


def test_without_a_client_limit_the_cluster_learns_one_pace_from_every_refusal(
    cluster: None, tmp_path: Path
) -> None:
    cache = tmp_path / "learn.duckdb"
    prompts = items(300, 300)
    with sim.serve(rate_limit=30, window=1.0) as server:  # a cap nobody told us about
        out = collect(
            mapped(
                ray.data.from_items(prompts),
                server,
                cache,
                workers=2,
                num_cpus=0.25,
                batch_size=50,
            )
        )
        stats = server.stats(per_prompt=False)
        refused = stats["status_counts"].get("429", 0)
        # every refusal a worker met went back to the hub's one pacer with its permit
        wait_for(lambda: plr.stats(cache=cache)["refusals"] == refused, what="every verdict at the hub")
        hub = plr.stats(cache=cache)
        assert hub["leases"] == stats["requests"]  # every attempt, retries too, took a permit
        assert hub["pace_per_min"] is not None  # the pace the cluster keeps, learned at the hub
    assert out["status"].to_list() == ["done"] * 300  # refusals were retried: no row failed
    assert out["result"].to_list() == [sim.expected_text(MODEL, t) for t in out["text"]]
