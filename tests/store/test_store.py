"""Tests of the DuckDB job store: real files in tmp_path, real subprocesses for locks and kill -9."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import polars as pl
import pytest

from polars_llm._store import OUTPUT_COLUMNS, TABLES_DOC, Outcome, Store, k64
from polars_llm._store import migrations as _migrations
from polars_llm.exceptions import ConfigError, StoreError

SRC = str(Path(__file__).resolve().parents[2] / "src")


def jobs(keys: list[str], model: str = "m") -> pl.DataFrame:
    return pl.DataFrame(
        {
            "key": keys,
            "prompt": [f"prompt {k}" for k in keys],
            "base_url": "http://x/v1",
            "model": model,
            "system": None,
            "params": '{"temperature":0.0}',
            "schema_name": None,
            "schema": None,
        },
        schema_overrides={"system": pl.String, "schema_name": pl.String, "schema": pl.String},
    )


def done(key: str, result: str = "ok", attempts: int = 1, **kw: object) -> Outcome:
    fields: dict[str, object] = {
        "status": "done",
        "result": result,
        "error": None,
        "error_kind": None,
        "tokens_in": 3,
        "tokens_out": 5,
        "cost": 0.25,
        "finished_at": time.time(),
    }
    fields.update(kw)
    return Outcome(key=key, attempts=attempts, **fields)  # type: ignore[arg-type]


def failed(key: str, kind: str = "rate_limit", attempts: int = 1) -> Outcome:
    return done(key, result=None, attempts=attempts, status="failed", error=f"boom {key}", error_kind=kind)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rows(store: Store) -> dict[str, dict[str, object]]:
    out = store.lookup(pl.DataFrame({"key": store_keys(store)}))
    return {r["key"]: r for r in out.to_dicts()}


def store_keys(store: Store) -> list[str]:
    assert store._con is not None
    return [r[0] for r in store._con.execute("SELECT key FROM requests").fetchall()]


def column(store: Store, name: str, key: str) -> object:
    assert store._con is not None
    return store._con.execute(f"SELECT {name} FROM requests WHERE key = ?", [key]).fetchall()[0][0]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "cache.duckdb") as s:
        yield s


def spawn(code: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


# -- roundtrip -----------------------------------------------------------------------------------------------


def test_register_lookup_write_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "cache.duckdb"
    with Store.open(path) as store:
        assert store.path == path
        assert store.register(jobs(["a", "b", "c"])) == 3
        assert store.register(jobs(["b", "c", "d"])) == 1  # anti-join: only the new key
        assert store.counts() == {"pending": 4}
        found = store.lookup(pl.DataFrame({"key": ["a", "zz", "d"], "other": [1, 2, 3]}))
        assert found.columns == ["key", "status", "result", "error"]
        assert sorted(found["key"].to_list()) == ["a", "d"]
        assert set(found["status"]) == {"pending"}
        store.write_outcomes([done("a", "hello"), failed("b")])
    with Store.open(path) as store:  # persisted across close/reopen
        got = rows(store)
        assert got["a"] == {"key": "a", "status": "done", "result": "hello", "error": None}
        assert got["b"]["status"] == "failed" and got["b"]["error"] == "boom b"
        assert got["c"]["status"] == "pending"
        assert column(store, "prompt", "a") == "prompt a"
        assert column(store, "params", "a") == '{"temperature":0.0}'
        assert column(store, "error_kind", "b") == "rate_limit"
        assert column(store, "cost", "a") == 0.25
        assert column(store, "tokens_out", "a") == 5
        assert column(store, "finished_at", "a") is not None
        assert column(store, "created_at", "a") is not None


def test_lookup_empty_and_all_missing(store: Store) -> None:
    empty = store.lookup(pl.DataFrame({"key": []}, schema={"key": pl.String}))
    assert empty.height == 0 and empty.columns == ["key", "status", "result", "error"]
    missing = store.lookup(pl.DataFrame({"key": ["nope"]}))
    assert missing.height == 0
    assert missing.schema == pl.Schema(
        {"key": pl.String, "status": pl.String, "result": pl.String, "error": pl.String}
    )


def test_register_optional_columns_and_duplicates(store: Store) -> None:
    frame = pl.DataFrame(
        {"key": ["k", "k"], "prompt": ["one", "two"], "base_url": "u", "model": "m", "params": "{}"}
    )
    assert store.register(frame) == 1
    assert column(store, "prompt", "k") == "one"
    assert store.register(frame.head(0)) == 0
    with pytest.raises(ValueError, match="prompt"):
        store.register(pl.DataFrame({"key": ["x"]}))


def test_attempts_accumulate_across_batches_and_runs(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    with Store.open(path) as store:
        store.register(jobs(["a"]))
        store.write_outcomes([failed("a", attempts=3)])
        store.write_outcomes([failed("a", attempts=2)])
        assert column(store, "attempts", "a") == 5
    with Store.open(path) as store:
        store.write_outcomes([done("a", attempts=1)])
        assert column(store, "attempts", "a") == 6
        assert column(store, "error", "a") is None and column(store, "error_kind", "a") is None
        assert store.counts() == {"done": 1}


def test_duplicate_keys_in_one_batch_keep_last(store: Store) -> None:
    store.register(jobs(["a", "b"]))
    store.write_outcomes([failed("a", attempts=4), done("b"), done("a", "second", attempts=2)])
    got = rows(store)
    assert got["a"]["status"] == "done" and got["a"]["result"] == "second"
    assert column(store, "attempts", "a") == 2
    assert store.counts() == {"done": 2}


def test_unregistered_keys_are_inserted_not_lost(store: Store) -> None:
    store.register(jobs(["a"]))
    store.write_outcomes([done("a"), done("ghost", "kept", attempts=2)])
    got = rows(store)
    assert got["ghost"]["result"] == "kept"
    assert column(store, "attempts", "ghost") == 2
    assert store.counts() == {"done": 2}
    store.write_outcomes([])  # no-op


def test_keys_sharing_their_first_64_bits_stay_distinct(store: Store) -> None:
    """Look-ups join on ``k64`` (the key's first 16 hex digits) and then on the whole key."""
    twins = ["0123456789abcdef" + "0" * 16, "0123456789abcdef" + "f" * 16]
    assert store.register(jobs(twins[:1])) == 1
    assert store.register(jobs(twins)) == 1  # the twin is new, its sibling is not registered twice
    store.write_outcomes([done(twins[0], "first")])
    got = store.lookup(pl.DataFrame({"key": twins}))
    assert dict(zip(got["key"], got["status"], strict=True)) == {twins[0]: "done", twins[1]: "pending"}
    only = store.lookup(pl.DataFrame({"key": twins[1:]}))
    assert only["key"].to_list() == twins[1:] and only["result"].to_list() == [None]


@pytest.mark.parametrize(
    "key",
    ["0123456789abcdef" * 2, "ffffffffffffffff" * 2, "0123456789ABCDEF" * 2, "k1", "abc", "", "é" * 20,
     "0123456789abcde", " 0123456789abcdef"],
)  # fmt: skip
def test_the_k64_of_sql_and_polars_agree(key: str) -> None:
    sql = duckdb.execute(f"SELECT {_migrations.K64_SQL.format(key='$1')}", [key]).fetchall()[0][0]
    assert pl.DataFrame({"key": [key]}).select(k64()).item() == sql


def test_a_migrated_file_finds_its_rows_by_k64(tmp_path: Path) -> None:
    path = tmp_path / "v5.duckdb"
    con = duckdb.connect(str(path))
    assert _migrations.migrate(con, path=path, target=5) == 5
    keys = [hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest() for i in range(3)] + ["odd-key"]
    for key in keys:
        con.execute(
            "INSERT INTO requests (key, prompt, status, result) VALUES (?, 'p', 'done', ?)", [key, key]
        )
    con.close()
    with Store.open(path) as store:
        got = store.lookup(pl.DataFrame({"key": keys}))
        assert sorted(got["result"].to_list()) == sorted(keys)


def test_threads_share_the_store(store: Store) -> None:
    keys = [f"k{i}" for i in range(2000)]
    store.register(jobs(keys))
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(0, len(keys), 100):
                store.write_outcomes([done(k) for k in keys[i : i + 100]])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    for _ in range(20):
        assert store.lookup(pl.DataFrame({"key": keys})).height == len(keys)
        store.counts()
    thread.join()
    assert not errors
    assert store.counts() == {"done": len(keys)}


def test_in_memory_store_leaves_nothing_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Store.open(None) as store:
        assert store.path is None
        assert store.register(jobs(["a", "b"])) == 2
        store.write_outcomes([done("a")])
        assert store.counts() == {"done": 1, "pending": 1}
        assert store.summary()["path"] is None
    with Store.open(None) as other:  # every in-memory store is its own
        assert other.counts() == {}
    assert list(tmp_path.iterdir()) == []


def test_close_is_idempotent_and_closed_store_refuses(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "c.duckdb")
    store.close()
    store.close()
    assert store.closed
    with pytest.raises(StoreError, match="closed"):
        store.counts()


# -- summary, counts, export ---------------------------------------------------------------------------------


def test_counts_and_summary(store: Store) -> None:
    store.register(jobs(["a", "b", "c"], model="m1"))
    store.register(jobs(["d", "e"], model="m2"))
    store.write_outcomes(
        [done("a"), done("d"), failed("b", "rate_limit"), failed("c", "rate_limit"), failed("e", "x")]
    )
    assert store.counts() == {"done": 2, "failed": 3}
    s = store.summary()
    assert s["total"] == 5
    assert s["schema_version"] == _migrations.CURRENT_VERSION
    assert s["by_status"] == {"done": 2, "failed": 3}
    assert s["by_model"] == {"m1": {"done": 1, "failed": 2}, "m2": {"done": 1, "failed": 1}}
    assert s["tokens_in"] == 15 and s["tokens_out"] == 25
    assert s["cost"] == pytest.approx(1.25)
    assert list(s["error_kinds"].items()) == [("rate_limit", 2), ("x", 1)]
    assert s["last_finished_at"] is not None


def test_export_jsonl_and_parquet(store: Store, tmp_path: Path) -> None:
    store.register(jobs(["a", "b", "c"]))
    store.write_outcomes([done("a", "A"), failed("b")])
    n = store.export(tmp_path / "out" / "all.jsonl", format="jsonl")
    assert n == 3
    lines = [json.loads(x) for x in (tmp_path / "out" / "all.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and list(lines[0]) == list(OUTPUT_COLUMNS)
    assert {r["key"]: r["result"] for r in lines}["a"] == "A"
    n = store.export(tmp_path / "done.parquet", format="parquet", where="status = 'done'")
    assert n == 1
    frame = pl.read_parquet(tmp_path / "done.parquet")
    assert frame.columns == list(OUTPUT_COLUMNS)
    assert frame["key"].to_list() == ["a"]
    with pytest.raises(ConfigError, match="where"):
        store.export(tmp_path / "x.jsonl", format="jsonl", where="no_such_column = 1")
    with pytest.raises(ConfigError, match="format"):
        store.export(tmp_path / "x.csv", format="csv")  # type: ignore[arg-type]


def test_tables_have_documented_columns_and_no_secret(store: Store) -> None:
    assert store._con is not None
    cols = [r[0] for r in store._con.execute("SELECT column_name FROM information_schema.columns").fetchall()]
    assert not [c for c in cols if "key" in c.lower() and c != "key"]
    for name in cols:
        assert f"`{name}`" in TABLES_DOC or name in TABLES_DOC


# -- locks and sharing ---------------------------------------------------------------------------------------


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "locked.duckdb"
    with Store.open(path) as store:
        store.register(jobs(["a"]))
    proc = spawn(
        "import sys\nfrom pathlib import Path\nfrom polars_llm._store.store import Store\n"
        f"s = Store.open(Path({str(path)!r}))\nprint('ready', flush=True)\nsys.stdin.read()\ns.close()\n"
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        with pytest.raises(StoreError) as info:
            Store.open(path)
        err = info.value
        assert str(path) in str(err)
        assert "PID" in str(err) and str(proc.pid) in str(err)
        assert "another notebook or process" in str(err) and "cache=" in str(err)
        assert err.path == str(path)
        assert err.holder is not None and str(proc.pid) in err.holder
    finally:
        proc.communicate(input="", timeout=60)
    with Store.open(path) as store:  # released once the holder exits
        assert store.counts() == {"pending": 1}


def test_second_open_in_same_process_shares_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.duckdb"
    first = Store.open(path)
    second = Store.open(path)
    try:
        first.register(jobs(["a"]))
        assert second.register(jobs(["a", "b"])) == 1
        second.write_outcomes([done("a")])
        assert first.counts() == {"done": 1, "pending": 1}
        first.close()
        assert second.counts() == {"done": 1, "pending": 1}
    finally:
        first.close()
        second.close()


# -- paths, foreign and corrupted files ----------------------------------------------------------------------


def test_missing_parent_directory_is_created(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "cache.duckdb"
    with Store.open(path) as store:
        assert store.register(jobs(["a"])) == 1
    assert path.is_file()


def test_unwritable_location(tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(StoreError) as info:
        Store.open(blocker / "cache.duckdb")
    assert str(blocker / "cache.duckdb") in str(info.value)
    assert blocker.read_text() == "not a directory"
    with pytest.raises(StoreError, match="directory"):
        Store.open(tmp_path)


def test_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "empty.duckdb"
    path.touch()
    with Store.open(path) as store:
        assert store.register(jobs(["a"])) == 1


def _foreign_duckdb(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE requests (key VARCHAR, n INTEGER)")
    con.execute("INSERT INTO requests VALUES ('x', 1)")
    con.execute("CREATE TABLE other (a INTEGER)")
    con.close()


def _foreign_duckdb_with_wal(path: Path) -> None:
    # A process that dies before its checkpoint leaves the last commit in the WAL only.
    _foreign_duckdb(path)
    proc = spawn(
        f"import duckdb, os\ncon = duckdb.connect({str(path)!r})\n"
        "con.execute('CREATE TABLE late (a INTEGER)')\nos._exit(0)\n"
    )
    proc.communicate(timeout=60)
    assert Path(str(path) + ".wal").exists()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: p.write_bytes(os.urandom(20_000)), id="random-bytes"),
        pytest.param(lambda p: p.write_text("hello\nthis is a text file\n"), id="text"),
        pytest.param(lambda p: p.write_bytes(b"\x00" * 8 + b"DUCK" + os.urandom(4000)), id="fake-magic"),
        pytest.param(_foreign_duckdb, id="foreign-duckdb"),
        pytest.param(_foreign_duckdb_with_wal, id="foreign-duckdb-wal"),
    ],
)
def test_foreign_or_corrupted_file_is_refused_and_untouched(tmp_path: Path, make: object) -> None:
    path = tmp_path / "cache.duckdb"
    make(path)  # type: ignore[operator]
    before = {p.name: digest(p) for p in tmp_path.iterdir()}
    with pytest.raises(StoreError) as info:
        Store.open(path)
    assert "not a polars_llm cache" in str(info.value) or "cannot open" in str(info.value)
    assert str(path) in str(info.value)
    assert info.value.path == str(path)
    assert {p.name: digest(p) for p in tmp_path.iterdir()} == before


def test_foreign_database_message(tmp_path: Path) -> None:
    path = tmp_path / "other.duckdb"
    _foreign_duckdb(path)
    with pytest.raises(StoreError, match="not a polars_llm cache"):
        Store.open(path)


# -- migrations ----------------------------------------------------------------------------------------------


def test_older_schema_version_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "v1.duckdb"
    con = duckdb.connect(str(path))
    assert _migrations.migrate(con, path=path, target=1) == 1
    cols = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns").fetchall()}
    assert "error_kind" not in cols and "cost" not in cols
    con.execute(
        "INSERT INTO requests (key, prompt, model, status, result, attempts) "
        "VALUES ('old', 'p', 'm', 'done', 'r', 2)"
    )
    con.close()
    with Store.open(path) as store:
        assert store.version == _migrations.CURRENT_VERSION
        assert rows(store)["old"]["result"] == "r"
        assert column(store, "error_kind", "old") is None
        assert column(store, "cost", "old") is None
        store.write_outcomes([failed("old", "timeout", attempts=1)])
        assert column(store, "error_kind", "old") == "timeout"
        assert column(store, "attempts", "old") == 3
        assert store._con is not None
        versions = store._con.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
        assert versions == [(v,) for v, _ in _migrations.MIGRATIONS]


def test_every_migration_is_idempotent(tmp_path: Path) -> None:
    """A step that runs twice (renumbered after landing on another branch) changes nothing the second time."""
    con = duckdb.connect(str(tmp_path / "twice.duckdb"))
    _migrations.migrate(con)
    before = con.execute(
        "SELECT table_name, column_name FROM information_schema.columns ORDER BY ALL"
    ).fetchall()
    for _version, step in _migrations.MIGRATIONS[1:]:  # v1 creates the tables and is never re-run
        step(con) if callable(step) else con.execute(step)
    after = con.execute(
        "SELECT table_name, column_name FROM information_schema.columns ORDER BY ALL"
    ).fetchall()
    assert before == after
    con.close()


def test_newer_schema_version_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.duckdb"
    with Store.open(path) as store:
        assert store._con is not None
        store._con.execute("INSERT INTO schema_version VALUES (99, now()::TIMESTAMP)")
    before = digest(path)
    with pytest.raises(StoreError, match="newer polars_llm") as info:
        Store.open(path)
    assert str(path) in str(info.value)
    assert digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["future.duckdb"]


def test_empty_duckdb_database_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "blank.duckdb"
    duckdb.connect(str(path)).close()
    with Store.open(path) as store:
        assert store.version == _migrations.CURRENT_VERSION


# -- durability ----------------------------------------------------------------------------------------------

_WRITER = """
import sys, time
from pathlib import Path
import polars as pl
from polars_llm._store.store import Outcome, Store

store = Store.open(Path({path!r}))
batch = 500
n = 0
while True:
    keys = [f"b{{n}}-{{i}}" for i in range(batch)]
    frame = pl.DataFrame({{"key": keys, "prompt": keys, "base_url": "u", "model": "m", "params": "{{}}"}})
    store.register(frame)
    store.write_outcomes(
        [Outcome(key=k, status="done", attempts=1, finished_at=time.time(), result="r" * 50) for k in keys]
    )
    print(f"committed {{n}}", flush=True)
    n += 1
"""


def test_kill_9_keeps_committed_batches(tmp_path: Path) -> None:
    path = tmp_path / "durable.duckdb"
    proc = spawn(_WRITER.format(path=str(path)))
    assert proc.stdout is not None
    last = -1
    try:
        while last < 5:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else "writer died"
            last = int(line.split()[1])
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with Store.open(path) as store:
        keys = [f"b{n}-{i}" for n in range(last + 1) for i in range(500)]
        found = store.lookup(pl.DataFrame({"key": keys}))
        assert found.height == len(keys)
        assert set(found["status"]) == {"done"}
        counts = store.counts()
        # a later batch may have committed its register but not its outcomes; never half a batch
        assert counts["done"] % 500 == 0 and counts.get("pending", 0) % 500 == 0
        assert counts["done"] >= len(keys)
        assert store.register(jobs(["after"])) == 1


def test_an_odd_value_in_one_outcome_does_not_lose_its_batch(tmp_path: Path) -> None:
    """A provider's non-text answer that slipped through must not drop the batch it is written with."""
    path = tmp_path / "odd.duckdb"
    with Store.open(path) as store:
        keys = [f"k{i}" for i in range(3)]
        store.register(
            pl.DataFrame({"key": keys, "prompt": keys, "base_url": "u", "model": "m", "params": "{}"})
        )
        odd = [{"type": "text", "text": "hi"}]
        store.write_outcomes(
            [
                Outcome("k0", "done", 1, 1.0, result="fine"),
                Outcome("k1", "done", 1, 1.0, result=odd, tokens_in="12", tokens_out=-3),  # type: ignore[arg-type]
                Outcome("k2", "done", 2, 1.0, result="also fine", cost=float("nan")),
            ]
        )
        rows = {r["key"]: r for r in store._con.sql("SELECT * FROM requests").pl().to_dicts()}  # type: ignore[union-attr]
    assert rows["k0"]["result"] == "fine" and rows["k2"]["result"] == "also fine"
    assert rows["k1"]["status"] == "done" and '"text": "hi"' in rows["k1"]["result"]
    assert (rows["k1"]["tokens_in"], rows["k1"]["tokens_out"], rows["k2"]["cost"]) == (12, None, None)


def test_a_run_never_imports_pandas(tmp_path: Path) -> None:
    """pyarrow's first conversion of Python objects imports pandas (when installed): 0.3-2.5 s holding
    the GIL, which stalled the event loop mid-run and was most of a small call's time. The store builds
    its batches with Polars, so neither registering nor writing imports anything (checked where pandas
    is installed, as in this project's environment)."""
    assert subprocess.run([sys.executable, "-c", "import pandas"], capture_output=True).returncode == 0
    code = f"""
import json, sys, time
sys.path.insert(0, {SRC!r})
import polars as pl
from polars_llm._store.store import Outcome, Store
with Store.open({str(tmp_path / "c.duckdb")!r}) as store:
    store.lookup(pl.DataFrame({{"key": ["a"]}}))
    looked_up = set(sys.modules)
    store.register(pl.DataFrame({{"key": ["a"], "prompt": ["p"], "base_url": ["u"], "model": ["m"],
                                  "params": ["{{}}"]}}))
    registered = set(sys.modules)
    store.write_outcomes([Outcome("a", "done", 1, time.time(), result="r", tokens_in=3)])
    print(json.dumps(sorted(registered - looked_up)))
    print(json.dumps(sorted(set(sys.modules) - registered)))
"""
    run = [sys.executable, "-c", code]
    out = subprocess.run(run, capture_output=True, text=True, timeout=120, check=True)
    at_register, at_write = (json.loads(line) for line in out.stdout.splitlines())
    assert at_write == [] and "pandas" not in at_register
