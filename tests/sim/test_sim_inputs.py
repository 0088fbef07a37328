"""The simulator's request log, image content parts and ``/v1/embeddings`` (over real HTTP)."""

from __future__ import annotations

import base64
import json
import struct
import urllib.error
import urllib.request
from typing import Any

import pytest

from polars_llm import sim


def post(server: sim.SimServer, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        server + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def chat(content: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": content}]}


def test_the_request_log_is_bounded_and_reset(sim_server: sim.SimServer) -> None:
    sim_server.configure(request_log=3)
    for i in range(5):
        post(sim_server, "/chat/completions", chat(f"p{i}"))
    log = sim_server.requests()
    assert [r["body"]["messages"][0]["content"] for r in log] == ["p2", "p3", "p4"]
    assert log[0]["path"] == "/v1/chat/completions"
    assert sim_server.requests(limit=1) == log[-1:]
    with urllib.request.urlopen(sim_server.url + "/requests?limit=2") as resp:
        assert json.load(resp) == log[-2:]
    assert sim_server.stats()["logged_requests"] == 3
    sim_server.reset()
    assert sim_server.requests() == []


def test_image_parts_are_checked_and_counted(sim_server: sim.SimServer) -> None:
    ok = [
        {"type": "text", "text": "what is it"},
        {"type": "image_url", "image_url": {"url": "https://e/x.png"}},
    ]
    status, body = post(sim_server, "/chat/completions", chat(ok))
    assert status == 200 and body["choices"][0]["message"]["content"] == sim.expected_text("m", "what is it")
    assert body["usage"]["prompt_tokens"] == (len("what is it") + 340) // 4
    for bad in (
        [{"type": "image_url", "image_url": {"url": "/local/path.png"}}],
        [{"type": "image_url", "image_url": {"url": "data:text/plain;base64,eA=="}}],
        [{"type": "video", "video": {}}],
    ):
        assert post(sim_server, "/chat/completions", chat(bad))[0] == 400


def test_embeddings_in_openais_format(sim_server: sim.SimServer) -> None:
    status, body = post(sim_server, "/embeddings", {"model": "e", "input": ["ab", "cdef"], "dimensions": 3})
    assert status == 200 and body["object"] == "list"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert body["data"][1]["embedding"] == sim.expected_embedding("e", "cdef", 3)
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == 2
    status, one = post(sim_server, "/embeddings", {"model": "e", "input": "ab"})
    assert len(one["data"][0]["embedding"]) == sim_server.config.embedding_dimensions
    status, packed = post(
        sim_server, "/embeddings", {"model": "e", "input": "ab", "encoding_format": "base64"}
    )
    raw = base64.b64decode(packed["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == sim.expected_embedding("e", "ab", 64)
    assert sim_server.stats()["embedding_requests"] == 3


@pytest.mark.parametrize(
    "body",
    [
        {"input": ["x"]},
        {"model": "e", "input": []},
        {"model": "e", "input": [""]},
        {"model": "e", "input": [1, 2]},
        {"model": "e", "input": ["x"] * 2049},
        {"model": "e", "input": ["x"], "dimensions": 0},
        {"model": "e", "input": ["x"], "encoding_format": "int8"},
    ],
)
def test_bad_embedding_requests_are_400(sim_server: sim.SimServer, body: dict[str, Any]) -> None:
    assert post(sim_server, "/embeddings", body)[0] == 400


def test_a_marker_in_one_input_applies_to_the_whole_request(sim_server: sim.SimServer) -> None:
    inputs = ["fine", "bad [[status:400]]", "also fine"]
    assert post(sim_server, "/embeddings", {"model": "e", "input": inputs})[0] == 400
    assert post(sim_server, "/embeddings", {"model": "e", "input": ["fine", "also fine"]})[0] == 200
    flaky = ["x [[flaky:503:1]]", "y"]
    assert post(sim_server, "/embeddings", {"model": "e", "input": flaky})[0] == 503
    assert post(sim_server, "/embeddings", {"model": "e", "input": flaky})[0] == 200
