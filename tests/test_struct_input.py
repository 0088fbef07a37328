"""Struct input: per-row system prompt, images, earlier turns and model, checked on the simulator's request
log (what actually went over HTTP), through both transports; keys, dedup, errors and the store."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pytest

import polars_llm
from polars_llm import ColumnTypeError, ConfigError, MapConfig, sim
from polars_llm.cli import main


def cli_main(*argv: str) -> int:
    return main(list(argv))


PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 24  # enough of a PNG for the type sniffing
JPEG = b"\xff\xd8\xff\xe0" + b"\x01" * 20
TRANSPORTS = ["aiohttp", "openai"]


def opts(server: sim.SimServer, **extra: Any) -> dict[str, Any]:
    return {"base_url": server, "api_key": "k", "progress": False, **extra}


def bodies(server: sim.SimServer) -> list[dict[str, Any]]:
    return [r["body"] for r in server.requests() if r["path"].endswith("/chat/completions")]


def by_prompt(server: sim.SimServer) -> dict[str, dict[str, Any]]:
    """The last request body per user prompt (the text of the final user turn)."""
    out = {}
    for body in bodies(server):
        user = body["messages"][-1]["content"]
        text = user if isinstance(user, str) else "".join(p.get("text", "") for p in user)
        out[text] = body
    return out


def struct_map(df: pl.DataFrame, server: sim.SimServer, model: str | None = "m", **kw: Any) -> pl.DataFrame:
    fields = {c: pl.col(c) for c in df.columns}
    expr = pl.struct(**fields).llm.map(model, **opts(server, **kw)).alias("llm")
    return df.with_columns(expr).unnest("llm")


# --- each field arrives where it belongs ------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_per_row_system_is_sent_as_the_system_message(
    sim_server: sim.SimServer, transport: str, cache_path: Path
) -> None:
    df = pl.DataFrame({"prompt": ["a", "b", "c"], "system": ["be brief", None, "be long"]})
    out = struct_map(df, sim_server, system="default", transport=transport, cache=cache_path)
    sent = by_prompt(sim_server)
    assert sent["a"]["messages"][0] == {"role": "system", "content": "be brief"}
    assert sent["b"]["messages"][0] == {"role": "system", "content": "default"}  # null: the option applies
    assert sent["c"]["messages"] == [
        {"role": "system", "content": "be long"},
        {"role": "user", "content": "c"},
    ]
    assert out["result"].to_list() == [
        sim.expected_text("m", "a", "be brief"),
        sim.expected_text("m", "b", "default"),
        sim.expected_text("m", "c", "be long"),
    ]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_images_are_image_parts_of_the_user_turn(
    sim_server: sim.SimServer, tmp_path: Path, transport: str
) -> None:
    (tmp_path / "cat.png").write_bytes(PNG)
    (tmp_path / "dog.bin").write_bytes(JPEG)  # the type comes from the bytes, not the name
    df = pl.DataFrame(
        {
            "prompt": ["one", "two", "three"],
            "images": [
                [str(tmp_path / "cat.png"), "https://example.com/x.jpg"],
                ["data:image/gif;base64,R0lGODlh"],
                [str(tmp_path / "dog.bin")],
            ],
        }
    )
    out = struct_map(df, sim_server, transport=transport, cache=None)
    assert out["status"].to_list() == ["done"] * 3
    sent = by_prompt(sim_server)
    assert sent["one"]["messages"][-1] == {
        "role": "user",
        "content": [
            {"type": "text", "text": "one"},
            {
                "type": "image_url",
                "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()},
            },
            {"type": "image_url", "image_url": {"url": "https://example.com/x.jpg"}},
        ],
    }
    assert sent["two"]["messages"][-1]["content"][1]["image_url"]["url"] == "data:image/gif;base64,R0lGODlh"
    assert sent["three"]["messages"][-1]["content"][1]["image_url"]["url"].startswith(
        "data:image/jpeg;base64,"
    )


def test_a_string_images_field_is_one_image(sim_server: sim.SimServer) -> None:
    df = pl.DataFrame({"prompt": ["p", "q"], "images": ["https://e.com/1.png", None]})
    out = struct_map(df, sim_server, cache=None)
    sent = by_prompt(sim_server)
    assert sent["p"]["messages"][-1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "https://e.com/1.png"},
    }
    assert sent["q"]["messages"][-1] == {"role": "user", "content": "q"}  # no image: a plain turn
    assert out["status"].to_list() == ["done", "done"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_earlier_turns_come_in_order_before_the_prompt(sim_server: sim.SimServer, transport: str) -> None:
    turns = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
    ]
    df = pl.DataFrame({"prompt": ["What is my name?", "hi"], "messages": [turns, None]})
    out = struct_map(df, sim_server, system="S", transport=transport, cache=None)
    sent = by_prompt(sim_server)
    assert sent["What is my name?"]["messages"] == [
        {"role": "system", "content": "S"},
        *turns,
        {"role": "user", "content": "What is my name?"},
    ]
    assert sent["hi"]["messages"] == [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    assert out["result"][0] == sim.expected_text("m", "What is my name?", "S")


def test_messages_fields_are_taken_by_name(sim_server: sim.SimServer) -> None:
    turns = pl.Series([[{"content": "earlier", "role": "user"}]])  # content before role
    df = pl.DataFrame({"prompt": ["now"]}).with_columns(messages=turns)
    struct_map(df, sim_server, cache=None)
    assert bodies(sim_server)[0]["messages"][0] == {"role": "user", "content": "earlier"}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_per_row_model_routes_the_row(sim_server: sim.SimServer, transport: str) -> None:
    df = pl.DataFrame({"prompt": ["x", "x", "y"], "model": ["cheap/a", "cheap/b", None]})
    out = struct_map(df, sim_server, model="default/m", transport=transport, cache=None)
    assert out["result"].to_list() == [
        sim.expected_text("cheap/a", "x"),
        sim.expected_text("cheap/b", "x"),
        sim.expected_text("default/m", "y"),
    ]
    assert sorted(b["model"] for b in bodies(sim_server)) == ["cheap/a", "cheap/b", "default/m"]


def test_model_option_may_be_left_out_when_every_row_names_one(
    sim_server: sim.SimServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MODEL", raising=False)
    monkeypatch.chdir(tmp_path)
    df = pl.DataFrame({"prompt": ["x", "y"], "model": ["a", "b"]})
    expr = pl.struct("prompt", "model").llm.map(**opts(sim_server, cache=None))  # built without a model
    assert df.select(expr.struct.field("result")).to_series().to_list() == ["a: x", "b: y"]
    framed = df.with_columns(req=pl.struct("prompt", "model"))
    assert framed.llm.map("req", **opts(sim_server, cache=None))["status"].to_list() == ["done", "done"]
    lazy = framed.lazy().llm.map("req", **opts(sim_server, cache=None)).collect()
    assert lazy["result"].to_list() == ["a: x", "b: y"]
    sim_server.reset()
    with pytest.raises(ConfigError, match="no model for 1 distinct row"):
        pl.DataFrame({"prompt": ["x", "y"], "model": ["a", None]}).llm.map(
            pl.struct("prompt", "model"), **opts(sim_server, cache=None)
        )
    with pytest.raises(ConfigError, match="no model"):
        pl.col("prompt").llm.map(**opts(sim_server))  # a plain column: refused when built
    with pytest.raises(ConfigError, match="no model"):
        pl.DataFrame({"prompt": ["x"], "system": ["s"]}).llm.map(
            pl.struct("prompt", "system"), **opts(sim_server, cache=None)
        )
    assert sim_server.stats()["requests"] == 0


# --- what is a ConfigError, what fails one row -----------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "error", "match"),
    [
        (pl.DataFrame({"prompt": ["x"], "sistem": ["s"]}), ConfigError, "unknown field.*'sistem'"),
        (pl.DataFrame({"system": ["s"]}), ConfigError, "no `prompt` field"),
        (pl.DataFrame({"prompt": [1]}), ColumnTypeError, "`prompt`.*Int64"),
        (pl.DataFrame({"prompt": ["x"], "system": [1.5]}), ColumnTypeError, "`system`.*Float64"),
        (pl.DataFrame({"prompt": ["x"], "images": [[1]]}), ColumnTypeError, "`images`"),
        (pl.DataFrame({"prompt": ["x"], "messages": [["hi"]]}), ColumnTypeError, "`messages`"),
        (
            pl.DataFrame({"prompt": ["x"], "messages": [[{"role": "user", "text": "t"}]]}),
            ColumnTypeError,
            "`messages`",
        ),
        (pl.DataFrame({"prompt": ["x"], "model": [3]}), ColumnTypeError, "`model`"),
    ],
)
def test_shape_problems_are_config_errors_before_any_request(
    sim_server: sim.SimServer, frame: pl.DataFrame, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        frame.llm.map(pl.struct(frame.columns), "m", **opts(sim_server, cache=None))
    assert sim_server.stats()["requests"] == 0


def test_value_problems_fail_only_their_row_naming_the_field(
    sim_server: sim.SimServer, tmp_path: Path, cache_path: Path
) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "ok.png").write_bytes(PNG)
    df = pl.DataFrame(
        {
            "prompt": ["missing", "text", "empty", "role", "fine"],
            "images": [
                [str(tmp_path / "nope.png")],
                [str(tmp_path / "notes.txt")],
                [""],
                None,
                [str(tmp_path / "ok.png")],
            ],
            "messages": [None, None, None, [{"role": "robot", "content": "beep"}], None],
        }
    )
    out = struct_map(df, sim_server, cache=cache_path)
    assert out["status"].to_list() == ["failed", "failed", "failed", "failed", "done"]
    assert list(by_prompt(sim_server)) == ["fine"]  # nothing was sent for the failed rows
    with duckdb.connect(str(cache_path), read_only=True) as con:
        errors = dict(con.execute("select prompt, error from requests where status = 'failed'").fetchall())
        kinds = {
            k for (k,) in con.execute("select error_kind from requests where status = 'failed'").fetchall()
        }
    assert errors["missing"].startswith("images[0]: cannot read") and "nope.png" in errors["missing"]
    assert errors["text"].startswith("images[0]:") and "not an image" in errors["text"]
    assert errors["empty"].startswith("images[0]: empty")
    assert errors["role"].startswith("messages[0].role must be one of")
    assert kinds == {"input"}


def test_an_image_file_fixed_later_is_asked_on_the_next_run(
    sim_server: sim.SimServer, tmp_path: Path
) -> None:
    path = tmp_path / "late.png"
    df = pl.DataFrame({"prompt": ["look"], "images": [str(path)]})
    cache = tmp_path / "c.duckdb"
    assert struct_map(df, sim_server, cache=cache)["status"].to_list() == ["failed"]
    path.write_bytes(PNG)
    assert struct_map(df, sim_server, cache=cache)["status"].to_list() == ["done"]


# --- keys: every field counts, nothing else, plain strings unchanged ------------------------------------


def test_a_struct_row_asking_what_a_plain_call_asks_shares_its_cache(
    sim_server: sim.SimServer, cache_path: Path
) -> None:
    plain = pl.DataFrame({"prompt": ["a", "b"]})
    plain.llm.map("prompt", "m", **opts(sim_server, cache=cache_path, system="S"))
    assert sim_server.stats()["requests"] == 2
    sim_server.reset()
    rows = pl.DataFrame({"prompt": ["a", "b"], "system": [None, "S"], "model": ["m", None]})
    out = struct_map(rows, sim_server, cache=cache_path, system="S")
    assert sim_server.stats()["requests"] == 0
    assert out["result"].to_list() == [sim.expected_text("m", "a", "S"), sim.expected_text("m", "b", "S")]
    cfg = MapConfig(model="m", api_key="k", base_url=sim_server, system="S", cache=None)
    keys = polars_llm._pipeline.pipeline.prepare(rows.to_struct("q"), cfg).keys.to_list()
    assert keys == cfg.request.key_maker().keys(["a", "b"])


def test_changing_any_field_asks_again_and_nothing_else_does(
    sim_server: sim.SimServer, tmp_path: Path, cache_path: Path
) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(PNG)
    turns = [{"role": "user", "content": "before"}]
    base = {"prompt": "p", "system": "s", "images": [str(image)], "messages": turns, "model": "m1"}

    def run(**change: Any) -> int:
        sim_server.reset()
        row = {**base, **change}
        frame = pl.DataFrame([row], schema={**pl.DataFrame([base]).schema})
        assert struct_map(frame, sim_server, model="m", cache=cache_path)["status"][0] == "done"
        return sim_server.stats()["requests"]

    assert run() == 1
    assert run() == 0  # nothing changed: answered from the cache
    assert run(prompt="p2") == 1
    assert run(system="s2") == 1
    assert run(model="m2") == 1
    assert run(messages=[{"role": "user", "content": "other"}]) == 1
    assert run(images=["https://e.com/a.png"]) == 1
    moved = tmp_path / "moved.png"
    moved.write_bytes(PNG)
    assert run(images=[str(moved)]) == 0  # same bytes under another path: the same request
    image.write_bytes(PNG + b"changed")
    assert run() == 1  # same path, new bytes: asked again


def test_plain_string_keys_are_unchanged() -> None:
    golden = json.loads((Path(__file__).parent / "data" / "golden_keys_v1.json").read_text())
    cfg = MapConfig(model="m", system="be brief", api_key="k", cache=None)
    assert cfg.request.key_maker().keys(["hello", "", "héllo ✓"]) == golden["system"]
    struct_keys = polars_llm._pipeline.pipeline.prepare(
        pl.DataFrame({"prompt": ["hello", "", "héllo ✓"]}).to_struct("q"), cfg
    ).keys.to_list()
    assert struct_keys == golden["system"]  # a struct of only `prompt` keys like the string


def test_deduplication_is_on_the_whole_struct(sim_server: sim.SimServer) -> None:
    df = pl.DataFrame(
        {
            "prompt": ["x", "x", "x", "x", None],
            "system": ["a", "a", "b", None, "a"],
        }
    )
    out = struct_map(df, sim_server, cache=None)
    assert sim_server.stats()["requests"] == 3  # (x, a), (x, b), (x, null)
    assert out["status"].to_list() == ["done", "done", "done", "done", "null"]
    assert out["result"][0] == out["result"][1] != out["result"][2]


def test_a_null_struct_row_is_null(sim_server: sim.SimServer) -> None:
    s = pl.Series("q", [{"prompt": "x", "system": None}, None])
    out = s.llm.map("m", **opts(sim_server, cache=None))
    assert out.struct.field("status").to_list() == ["done", "null"]


def test_the_store_keeps_each_rows_prompt_model_system_and_input(
    sim_server: sim.SimServer, cache_path: Path
) -> None:
    df = pl.DataFrame(
        {
            "prompt": ["q1", "q2"],
            "system": ["s1", None],
            "model": [None, "m2"],
            "images": [["data:image/png;base64," + "A" * 400], None],
            "messages": [[{"role": "user", "content": "t"}], None],
        }
    )
    struct_map(df, sim_server, system="S", cache=cache_path)
    with duckdb.connect(str(cache_path), read_only=True) as con:
        rows = con.execute("select prompt, model, system, input from requests order by prompt").fetchall()
    assert rows[0][:3] == ("q1", "m", "s1")
    assert rows[1] == ("q2", "m2", "S", None)
    shown = json.loads(rows[0][3])
    assert shown["messages"] == [{"role": "user", "content": "t"}]
    assert shown["images"][0].startswith("data:image/png;base64,…") and "A" * 50 not in shown["images"][0]


def test_a_worker_takes_only_a_prompt_field() -> None:
    async def echo(prompt: str) -> str:
        return prompt

    ok = pl.DataFrame({"prompt": ["a"]}).llm.map(pl.struct("prompt"), worker=echo, cache=None, progress=False)
    assert ok["result"].to_list() == ["a"]
    with pytest.raises(ConfigError, match="worker"):
        pl.DataFrame({"prompt": ["a"], "system": ["s"]}).llm.map(
            pl.struct("prompt", "system"), worker=echo, cache=None, progress=False
        )


# --- templates ---------------------------------------------------------------------------------------------


def test_template_builds_the_prompt_from_columns(sim_server: sim.SimServer) -> None:
    df = pl.DataFrame({"title": ["Kettle", "Lamp"], "body": ["late", None], "stars": [2, 5]})
    prompts = df.select(polars_llm.template("Classify {title} ({stars}★): {body} as {{json}}"))
    assert prompts["prompt"].to_list() == ["Classify Kettle (2★): late as {json}", None]
    same = df.select(pl.format("Classify {} ({}★): {} as {{json}}", "title", "stars", "body"))
    assert same.to_series().to_list() == prompts["prompt"].to_list()  # pl.format builds the same prompts
    out = df.with_columns(
        polars_llm.template("{title}: {body}").llm.map("m", **opts(sim_server, cache=None)).alias("llm")
    ).unnest("llm")
    assert out["status"].to_list() == ["done", "null"]  # a null column value: nothing sent
    assert out["result"][0] == sim.expected_text("m", "Kettle: late")


def test_template_in_a_struct_input(sim_server: sim.SimServer) -> None:
    df = pl.DataFrame({"title": ["T"], "tone": ["be terse"]})
    req = pl.struct(polars_llm.template("Title: {title}"), system=pl.col("tone"))
    out = df.llm.map(req, "m", **opts(sim_server, cache=None))
    assert out["result"].to_list() == [sim.expected_text("m", "Title: T", "be terse")]


def test_template_with_an_unknown_column_fails_before_any_request(sim_server: sim.SimServer) -> None:
    df = pl.DataFrame({"title": ["T"]})
    with pytest.raises(pl.exceptions.ColumnNotFoundError, match="titel"):
        df.with_columns(polars_llm.template("{titel}").llm.map("m", **opts(sim_server, cache=None)))
    assert sim_server.stats()["requests"] == 0


@pytest.mark.parametrize("text", ["{}", "{a:>4}", "{a!r}", "{a", "a}"])
def test_template_refuses_what_is_not_a_plain_column_name(text: str) -> None:
    with pytest.raises(ConfigError, match="template"):
        polars_llm.template(text)


# --- CLI ---------------------------------------------------------------------------------------------


def test_cli_run_takes_the_fields_as_columns(
    sim_server: sim.SimServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENROUTER_API_KEY", "k")
    monkeypatch.delenv("MODEL", raising=False)
    pl.DataFrame(
        {
            "q": ["hi", "hi", "yo"],
            "sys": ["s1", None, "s2"],
            "mdl": ["x", "y", "z"],
            "img": [["https://e.com/i.png"], None, None],
            "turns": [None, [{"role": "user", "content": "before"}], None],
        }
    ).write_parquet("in.parquet")
    args = ["run", "in.parquet", "--column", "q", "--output", "out.parquet", "--base-url", sim_server, "-q"]
    flags = [
        "--system-column",
        "sys",
        "--model-column",
        "mdl",
        "--image-column",
        "img",
        "--messages-column",
        "turns",
    ]
    assert cli_main(*args, *flags) == 0
    out = pl.read_parquet("out.parquet")
    assert out.columns == ["q", "sys", "mdl", "img", "turns", "result", "status"]
    assert out["result"].to_list() == [
        sim.expected_text("x", "hi", "s1"),
        sim.expected_text("y", "hi"),
        sim.expected_text("z", "yo", "s2"),
    ]
    sent = {(b["model"], b["messages"][-1]["role"]): b for b in bodies(sim_server)}
    assert sent[("x", "user")]["messages"][-1]["content"][1]["image_url"]["url"] == "https://e.com/i.png"
    assert sent[("y", "user")]["messages"][0] == {"role": "user", "content": "before"}
    assert cli_main(*args, "--system-column", "nope") == 2
