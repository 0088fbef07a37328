"""Tests of polars_llm.sim: real HTTP against the simulator (http.client for single calls, aiohttp for
concurrent ones). No sleeps for synchronisation and no timing asserts."""

from __future__ import annotations

import asyncio
import copy
import doctest
import enum
import http.client
import json
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import date, datetime
from typing import Any, Literal, Optional
from urllib.parse import urlsplit
from uuid import UUID

import aiohttp
import pytest
from pydantic import BaseModel, Field

from polars_llm import sim
from polars_llm.exceptions import ConfigError

Json = dict[str, Any]


# ------------------------------------------------------------------------------------------ helpers


def chat_body(prompt: str, *, model: str = "m", system: str | None = None, **extra: Any) -> Json:
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt})
    return {"model": model, "messages": messages, **extra}


def rf(schema: Json, name: str = "out") -> Json:
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


def request(
    server: str,
    method: str,
    path: str,
    body: Json | bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One HTTP exchange with http.client (no exceptions for non-2xx statuses)."""
    parts = urlsplit(server)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, parts.path + path, body=data, headers=all_headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def chat(server: str, prompt: str, **kwargs: Any) -> tuple[int, http.client.HTTPMessage, bytes]:
    headers = kwargs.pop("headers", None)
    return request(server, "POST", "/chat/completions", chat_body(prompt, **kwargs), headers)


def content_of(raw: bytes) -> Any:
    return json.loads(raw)["choices"][0]["message"]["content"]


async def chat_many(server: str, bodies: list[Json], headers: dict[str, str] | None = None) -> list[Any]:
    """Send every body at once; returns (status, headers, body) per request."""

    async with aiohttp.ClientSession() as session:

        async def one(body: Json) -> tuple[int, Any, bytes]:
            async with session.post(server + "/chat/completions", json=body, headers=headers) as resp:
                return resp.status, resp.headers, await resp.read()

        return await asyncio.gather(*(one(b) for b in bodies))


def sim_threads(port: int | None = None) -> list[threading.Thread]:
    """Simulator threads (of one port, or of any server but the module fixture's)."""
    names = [t for t in threading.enumerate() if t.name.startswith("polars-llm-sim:")]
    if port is not None:
        return [t for t in names if t.name == f"polars-llm-sim:{port}"]
    return [t for t in names if t.name not in _FIXTURE_THREADS]


_FIXTURE_THREADS: set[str] = set()


@pytest.fixture(scope="module")
def server() -> Iterator[sim.SimServer]:
    with sim.serve() as s:
        _FIXTURE_THREADS.add(f"polars-llm-sim:{s.port}")
        yield s


# ------------------------------------------------------------------------------------ lifecycle


def test_serve_is_a_base_url_and_exits_cleanly() -> None:
    before = set(threading.enumerate())
    with sim.serve() as s:
        assert isinstance(s, str)
        assert s == s.base_url and s.startswith("http://127.0.0.1:") and s.endswith("/v1")
        assert s.url + "/v1" == s and s.port == urlsplit(s).port
        assert s.running and len(sim_threads(s.port)) == 1
        status, _, _raw = chat(s, "ping")
        assert status == 200
    assert not s.running
    assert set(threading.enumerate()) <= before
    assert not sim_threads(s.port)
    with pytest.raises(OSError):
        request(s, "GET", "/models")
    s.stop()  # idempotent


def test_start_inside_running_loop_and_several_servers() -> None:
    async def notebook_cell() -> list[int]:
        with sim.serve() as a, sim.serve() as b:
            assert a != b
            results = await chat_many(a, [chat_body("x")]) + await chat_many(b, [chat_body("y")])
            return [status for status, _, _ in results]

    assert asyncio.run(notebook_cell()) == [200, 200]
    assert not sim_threads()


def test_start_stop_and_pickle_as_plain_string() -> None:
    s = sim.start(sim.SimConfig(latency=0.0), seed=3)
    try:
        assert s.config.seed == 3
        assert pickle.loads(pickle.dumps(s)) == s and type(pickle.loads(pickle.dumps(s))) is str
        assert type(copy.copy(s)) is str and type(copy.deepcopy(s)) is str
        assert "running=True" in repr(s)
    finally:
        s.stop()
    assert not sim_threads()


def test_invalid_options() -> None:
    with pytest.raises(ConfigError, match="error_rate"):
        sim.SimConfig(error_rate=1.5)
    with pytest.raises(ConfigError, match="add up"):
        sim.SimConfig(error_rate=0.6, reset_rate=0.6)
    with pytest.raises(ConfigError, match="fail_mode"):
        sim.SimConfig(fail_mode=500)
    with pytest.raises(ConfigError, match="rate_limit"):
        sim.SimConfig(rate_limit=0)
    with pytest.raises(ConfigError):
        sim.serve(bogus=1).__enter__()
    assert not sim_threads()


# -------------------------------------------------------------------------------------- answers


def test_deterministic_text_usage_and_cost(server: sim.SimServer) -> None:
    status, headers, raw = chat(server, "hello world", model="x/y", system="be brief", max_tokens=100)
    assert status == 200 and headers["Content-Type"] == "application/json"
    data = json.loads(raw)
    assert data["object"] == "chat.completion" and data["model"] == "x/y"
    choice = data["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    text = sim.expected_text("x/y", "hello world", system="be brief")
    assert choice["message"]["content"] == text == "x/y [be brief]: dlrow olleh"
    assert sim.expected_content("x/y", "hello world", "be brief") == text
    usage = data["usage"]
    assert usage["prompt_tokens"] == sim.count_tokens("be brief" + "hello world")
    assert usage["completion_tokens"] == sim.count_tokens(text)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    cfg = server.config
    expected_cost = (
        usage["prompt_tokens"] * cfg.prompt_price + usage["completion_tokens"] * cfg.completion_price
    )
    assert usage["cost"] == pytest.approx(expected_cost)
    assert content_of(chat(server, "hello world", model="x/y")[2]) == "x/y: dlrow olleh"


def test_max_tokens_json_object_and_bad_requests(server: sim.SimServer) -> None:
    _, _, raw = chat(server, "a long prompt to be cut", max_tokens=2)
    data = json.loads(raw)
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["choices"][0]["message"]["content"] == sim.expected_text("m", "a long prompt to be cut")[:8]
    _, _, raw = chat(server, "obj", response_format={"type": "json_object"})
    assert json.loads(content_of(raw)) == {"model": "m", "answer": "m: jbo"}
    assert request(server, "POST", "/chat/completions", b"{not json")[0] == 400
    assert request(server, "POST", "/chat/completions", {"messages": []})[0] == 400
    no_user = {"model": "m", "messages": [{"role": "system", "content": "s"}]}
    status, _, raw = request(server, "POST", "/chat/completions", no_user)
    assert status == 400 and "user message" in json.loads(raw)["error"]["message"]


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Address(BaseModel):
    street: str
    city: str = Field(min_length=3, max_length=12)
    zip_code: str = Field(pattern=r"^\d{5}$")


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=130)
    score: float = Field(gt=0, lt=1)
    born: date
    seen_at: datetime
    kind: Literal["a", "b", "c"]
    color: Color
    nickname: Optional[str]  # noqa: UP045 - exercise the Optional spelling
    address: Address
    previous: list[Address]
    tags: list[str] = Field(min_length=1, max_length=3)
    counts: dict[str, int]
    uid: UUID
    active: bool
    friend: Person | None = None


def test_json_schema_output_validates_with_pydantic(server: sim.SimServer) -> None:
    schema = Person.model_json_schema()
    fmt = rf(schema, "Person")
    prompts = [f"describe person {i}" for i in range(40)]
    results = asyncio.run(chat_many(server, [chat_body(p, response_format=fmt) for p in prompts]))
    nicknames = set()
    friends = 0
    for prompt, (status, _, raw) in zip(prompts, results, strict=True):
        assert status == 200
        content = content_of(raw)
        person = Person.model_validate_json(content)
        assert json.loads(content) == sim.expected_json(schema, "m", prompt)
        assert content == sim.expected_content("m", prompt, response_format=fmt)
        assert 1 <= len(person.previous) <= 3 and 1 <= len(person.tags) <= 3
        nicknames.add(person.nickname is None)
        friends += person.friend is not None
    assert nicknames == {True, False}  # both branches of Optional occur
    assert friends > 0  # the recursive $ref is followed
    assert sim.expected_json(schema, "m", "p") != sim.expected_json(schema, "other-model", "p")


def test_expected_json_covers_schema_keywords() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema: Json = {
        "type": "object",
        "properties": {
            "const": {"const": "fixed"},
            "choice": {"enum": [1, "two", None]},
            "one": {"oneOf": [{"type": "integer", "multipleOf": 5, "minimum": 10}, {"type": "null"}]},
            "typelist": {"type": ["string", "boolean"]},
            "when": {"type": "string", "format": "date-time"},
            "day": {"type": "string", "format": "date"},
            "mail": {"type": "string", "format": "email"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5},
            "tuple": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
            "unique": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "uniqueItems": True},
            "many": {"type": "array", "items": {"type": "integer"}, "minItems": 4, "maxItems": 6},
            "node": {"$ref": "#/$defs/Node"},
            "merged": {"allOf": [{"$ref": "#/$defs/Leaf"}, {"properties": {"extra": {"type": "boolean"}}}]},
        },
        "required": ["const", "choice", "node"],
        "additionalProperties": False,
        "$defs": {
            "Leaf": {"type": "object", "properties": {"v": {"type": "integer"}}, "required": ["v"]},
            "Node": {
                "type": "object",
                "properties": {
                    "leaf": {"$ref": "#/$defs/Leaf"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                },
                "required": ["leaf", "children"],
                "additionalProperties": False,
            },
        },
    }
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
    seen_one = set()
    for i in range(60):
        value = sim.expected_json(schema, "m", f"prompt {i}")
        validator.validate(value)
        date.fromisoformat(value["day"])
        datetime.fromisoformat(value["when"].replace("Z", "+00:00"))
        assert value["const"] == "fixed" and set(value["merged"]) == {"v", "extra"}
        seen_one.add(value["one"] is None)
    assert seen_one == {True, False}


# ------------------------------------------------------------------------------------- auth, 429


def test_api_key_required() -> None:
    with sim.serve(api_key="sk-test") as s:
        status, _, raw = chat(s, "hi")
        assert status == 401
        error = json.loads(raw)["error"]
        assert error["code"] == 401 and error["type"] == "authentication_error" and "message" in error
        assert chat(s, "hi", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert request(s, "GET", "/models")[0] == 401
        ok = {"Authorization": "Bearer sk-test"}
        assert chat(s, "hi", headers=ok)[0] == 200
        status, _, raw = request(s, "GET", "/models", headers=ok)
        assert status == 200 and json.loads(raw)["data"][0]["id"] == "sim/echo"
        assert s.stats()["status_counts"] == {"401": 2, "200": 1}


def test_sliding_window_rate_limit() -> None:
    with sim.serve(rate_limit=5, window=60.0) as s:
        results = asyncio.run(chat_many(s, [chat_body(f"p{i}") for i in range(8)]))
        statuses = sorted(status for status, _, _ in results)
        assert statuses == [200] * 5 + [429] * 3
        for status, headers, raw in results:
            if status == 429:
                assert 1 <= int(headers["Retry-After"]) <= 60
                assert 0 < int(headers["retry-after-ms"]) <= 60_000
                assert json.loads(raw)["error"]["code"] == 429
        stats = s.stats()
        assert stats["status_counts"] == {"200": 5, "429": 3} and stats["faults"] == {"rate_limit": 3}
        # rejected requests did not enter the window: raising the cap by one admits exactly one more
        s.configure(rate_limit=6)
        assert chat(s, "again")[0] == 200
        assert chat(s, "again")[0] == 429
        s.configure(rate_limit=None)
        assert chat(s, "again")[0] == 200
        s.reset()  # also empties the window
        s.configure(rate_limit=1)
        assert chat(s, "fresh")[0] == 200 and chat(s, "fresh")[0] == 429


def test_fixed_window_and_token_bucket_shapes() -> None:
    with sim.serve(rate_limit=3, window=600.0, limit_shape="fixed") as s:
        assert [chat(s, f"f{i}")[0] for i in range(5)] == [200, 200, 200, 429, 429]
        status, headers, _ = chat(s, "f5")
        assert status == 429 and headers["x-ratelimit-remaining-requests"] == "0"
        assert int(headers["Retry-After"]) <= 600  # until the fixed window ends
    with sim.serve(rate_limit=1, window=3600.0, limit_shape="bucket", bucket_burst=4) as s:
        # a full bucket of 4 admits a burst of 4; refilling one per hour, the fifth waits
        assert [chat(s, f"b{i}")[0] for i in range(6)] == [200] * 4 + [429] * 2
        s.configure(rate_limit=360_000, window=1.0)  # the cap changes live: refilled within a millisecond
        assert chat(s, "b6")[0] == 200


@pytest.mark.parametrize(
    ("style", "names"),
    [
        (
            "openai",
            ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"),
        ),
        ("openrouter", ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")),
        ("anthropic", ("anthropic-ratelimit-requests-limit", "anthropic-ratelimit-requests-reset")),
        ("ietf", ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")),
    ],
)
def test_limit_headers_on_every_answer_parse_back(style: str, names: tuple[str, ...]) -> None:
    from polars_llm._transport.limit_headers import parse_limits

    with sim.serve(rate_limit=10, window=60.0, limit_headers="all", limit_header_style=style) as s:
        status, headers, _ = chat(s, "one")
        assert status == 200 and all(name in headers for name in names)
        limits = parse_limits(dict(headers.items()))
        assert limits is not None and limits.requests is not None
        assert (limits.requests.limit, limits.requests.remaining) == (10, 9)
        assert limits.requests.reset is not None and 0 < limits.requests.reset <= 60.5
    with sim.serve(rate_limit=10, limit_headers="none") as s:
        status, headers, _ = chat(s, "one")
        assert not any("ratelimit" in name.lower() for name in headers)


def test_token_window_limit() -> None:
    with sim.serve(tpm_limit=10, tpm_window=60.0) as s:
        assert chat(s, "x" * 100)[0] == 413  # 25 tokens can never fit
        assert chat(s, "y" * 16)[0] == 200  # 4 prompt + 4 completion tokens
        status, headers, _ = chat(s, "z" * 16)
        assert status == 429 and int(headers["Retry-After"]) >= 1
        assert s.stats()["faults"]["tpm_limit"] == 1


def test_burst_and_fail_modes_via_configure() -> None:
    with sim.serve() as s:
        s.burst(seconds=600, retry_after=7)
        status, headers, _ = chat(s, "storm")
        assert status == 429 and headers["Retry-After"] == "7" and s.stats()["burst_active"]
        s.configure(burst_429=False)
        assert chat(s, "storm")[0] == 200
        s.configure(fail_mode=402)
        status, headers, raw = chat(s, "pay")
        assert status == 402 and "Retry-After" not in headers
        assert json.loads(raw)["error"]["message"] == "Insufficient credits"
        s.configure(fail_mode=401)
        assert chat(s, "who")[0] == 401
        s.configure(fail_mode=403)
        assert chat(s, "no")[0] == 403
        s.configure(fail_mode=None)
        assert chat(s, "fine")[0] == 200
        with pytest.raises(ConfigError):
            s.configure(port=1234)
        with pytest.raises(ConfigError):
            s.configure(bogus=True)
        with pytest.raises(ConfigError):
            s.configure(error_rate=-1)
        # the HTTP control endpoints do the same
        status, _, raw = request(s.url, "POST", "/configure", {"fail_mode": 403})
        assert status == 200 and json.loads(raw)["fail_mode"] == 403 and s.config.fail_mode == 403
        assert request(s.url, "POST", "/configure", {"fail_mode": 999})[0] == 400


# --------------------------------------------------------------------------------------- markers


def test_status_and_flaky_markers() -> None:
    with sim.serve() as s:
        assert [chat(s, "bad [[status:400]]")[0] for _ in range(3)] == [400, 400, 400]
        assert [chat(s, "f [[flaky:500:2]]")[0] for _ in range(4)] == [500, 500, 200, 200]
        # attempts are counted per (model, prompt, response_format present?)
        assert chat(s, "f [[flaky:500:2]]", model="other")[0] == 500
        fmt = rf({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
        assert chat(s, "f [[flaky:500:2]]", response_format=fmt)[0] == 500
        first = chat(s, "r [[flaky429:2]]")
        assert first[0] == 429 and first[1]["Retry-After"] == "1" and first[1]["retry-after-ms"] == "1000"
        assert chat(s, "r [[flaky429:2]]")[0] == 429
        status, _, raw = chat(s, "r [[flaky429:2]]")
        assert status == 200 and content_of(raw) == sim.expected_text("m", "r [[flaky429:2]]")
        assert s.stats()["per_prompt"]["f [[flaky:500:2]]"] == 6


def test_content_markers() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    with sim.serve() as s:
        data = json.loads(chat(s, "[[content_filter]] hmm")[2])
        assert data["choices"][0]["finish_reason"] == "content_filter"
        assert data["choices"][0]["message"]["content"] is None
        data = json.loads(chat(s, "cut me [[length]]")[2])
        full = sim.expected_text("m", "cut me [[length]]")
        cut = data["choices"][0]["message"]["content"]
        assert data["choices"][0]["finish_reason"] == "length"
        assert full.startswith(cut) and 0 < len(cut) < len(full)
        bad = chat(s, "j [[bad_json]]", response_format=rf(schema))[2]
        with pytest.raises(json.JSONDecodeError):
            json.loads(content_of(bad))
        wrong = json.loads(content_of(chat(s, "w [[wrong_schema]]", response_format=rf(schema))[2]))
        assert not isinstance(wrong, dict)
        once = [content_of(chat(s, "j [[bad_json:1]]", response_format=rf(schema))[2]) for _ in range(2)]
        assert once[1] == sim.expected_content("m", "j [[bad_json:1]]", response_format=rf(schema))
        assert once[0] != once[1]
        data = json.loads(chat(s, "nothing [[empty]]")[2])
        assert data["choices"] == []


def test_transport_fault_markers() -> None:
    with sim.serve() as s:
        status, headers, raw = chat(s, "[[error200]] x")
        assert (
            status == 200 and json.loads(raw)["error"]["code"] == 502 and headers["X-Sim-Fault"] == "error200"
        )
        status, headers, raw = chat(s, "[[truncated]] x")
        assert status == 200 and int(headers["Content-Length"]) == len(raw)
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)
        status, _, raw = chat(s, "[[malformed]] x")
        assert status == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(raw)
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            chat(s, "[[reset]] x")
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            chat(s, "[[reset:1]] y")
        assert chat(s, "[[reset:1]] y")[0] == 200
        s.configure(truncate_close=True)
        with pytest.raises(http.client.IncompleteRead):
            chat(s, "[[truncated]] x")
        faults = s.stats()["faults"]
        assert faults == {"error200": 1, "truncated": 2, "malformed": 1, "reset": 2}
        assert s.stats()["ok"] == 1


def test_stall_makes_clients_time_out_and_server_still_exits() -> None:
    with sim.serve(stall_seconds=30.0) as s:

        async def go() -> None:
            timeout = aiohttp.ClientTimeout(total=0.3)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                with pytest.raises(asyncio.TimeoutError):
                    async with session.post(s + "/chat/completions", json=chat_body("[[stall]]")) as r:
                        await r.read()

        asyncio.run(go())
        s.configure(stall_seconds=0.0)
        status, headers, _ = chat(s, "[[stall:5]] quick")
        assert status == 200 and headers["X-Sim-Fault"] == "stall"
    assert not sim_threads()


def test_global_fault_rates_are_seeded() -> None:
    def run(seed: int) -> list[int]:
        with sim.serve(error_rate=0.5, seed=seed) as s:
            return [chat(s, f"p{i}")[0] for i in range(30)]

    first = run(7)
    assert first == run(7)
    assert set(first) <= {200, 500, 502, 503} and 200 in first and len(set(first)) > 1
    with sim.serve(error_rate=1.0, error_statuses=(503,), error_retry_after=2.0) as s:
        status, headers, _ = chat(s, "down")
        assert status == 503 and headers["Retry-After"] == "2" and headers["retry-after-ms"] == "2000"
        s.configure(error_rate=0.0, empty_choices_rate=1.0)
        assert json.loads(chat(s, "e")[2])["choices"] == []
        s.configure(empty_choices_rate=0.0, error_in_200_rate=1.0)
        assert "error" in json.loads(chat(s, "e")[2])


# ----------------------------------------------------------------------------------------- stats


def test_stats_and_reset() -> None:
    with sim.serve() as s:
        prompts = ["a", "b", "a", "c [[delay:0.2]]"] + [f"d{i} [[delay:0.2]]" for i in range(7)]
        results = asyncio.run(chat_many(s, [chat_body(p) for p in prompts]))
        assert [status for status, _, _ in results] == [200] * len(prompts)
        assert chat(s, "x [[status:404]]")[0] == 404
        stats = s.stats()
        assert stats["requests"] == 12 and stats["ok"] == 11 and stats["in_flight"] == 0
        assert stats["status_counts"] == {"200": 11, "404": 1}
        assert stats["per_prompt"]["a"] == 2 and stats["unique_prompts"] == 11
        assert 2 <= stats["max_in_flight"] <= 11  # the delayed requests overlap
        tokens_out = sum(json.loads(raw)["usage"]["completion_tokens"] for _, _, raw in results)
        tokens_in = sum(json.loads(raw)["usage"]["prompt_tokens"] for _, _, raw in results)
        assert stats["tokens_out"] == tokens_out and stats["tokens_in"] == tokens_in
        assert stats["cost"] == pytest.approx(sum(json.loads(r)["usage"]["cost"] for _, _, r in results))
        status, _, raw = request(s.url, "GET", "/stats?per_prompt=0")
        assert status == 200 and "per_prompt" not in json.loads(raw)
        assert json.loads(request(s, "GET", "/stats")[2])["per_prompt"]["a"] == 2
        assert "per_prompt" not in s.stats(per_prompt=False)
        s.reset()
        zero = s.stats()
        assert zero["requests"] == zero["ok"] == zero["unique_prompts"] == 0 and zero["per_prompt"] == {}
        chat(s, "a")
        assert request(s.url, "POST", "/reset")[0] == 200
        assert s.stats()["requests"] == 0


# --------------------------------------------------------------------------------- cli and docs


def test_main_with_duration(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim.main(["--duration", "0", "--latency", "0.01", "--rate-limit", "5"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("http://127.0.0.1:") and out.strip().endswith("/v1") and "served 0" in err
    assert sim.main(["--duration", "0", "--error-rate", "2"]) == 2
    assert not sim_threads()


def test_command_line_serves_until_interrupted() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "polars_llm.sim", "--port", "0", "--api-key", "k"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        status, _, raw = chat(url, "cli", headers={"Authorization": "Bearer k"})
        assert status == 200 and content_of(raw) == "m: ilc"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_docstring_examples() -> None:
    from polars_llm.sim import _engine, _hostile, _limiter, _options, _outputs, _server, _wire

    for module in (sim, _engine, _hostile, _limiter, _options, _outputs, _server, _wire):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__
    assert sim.parse_markers("[[flaky:503:3]]") == (("status", 503, 3, 0.0, ""),)
