"""``POST /v1/chat/completions`` of the simulator: admission, faults and the answer.

Each request counts one attempt of its prompt for the ``[[...]]`` markers, draws the global fault rates once
and waits out its latency; the answer is :func:`completion`, the same body batch mode writes into its
output lines. Every count goes through the server's :class:`~._state.SimState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from typing import Any, Final

import orjson
from aiohttp import web

from ._hostile import HOSTILE, hostile_response
from ._options import SimConfig
from ._outputs import count_tokens
from ._state import SimState
from ._wire import JSON_HEADERS, ParsedRequest, fault_error, parse_markers, receive

__all__ = ["completion", "handle_chat"]

_MALFORMED_BODY: Final = b'<html><body><h1>upstream sent garbage</h1> {"id": oops</body></html>'
_BAD_JSON: Final = 'Sure! Here is the JSON you asked for: {"answer": '
_WRONG_SCHEMA: Final = '["this", "does", "not", "match", "the", "schema"]'
_LINGER_RST: Final = struct.pack("ii", 1, 0)


async def handle_chat(
    state: SimState, request: web.Request, cfg: SimConfig
) -> tuple[web.StreamResponse, int]:
    parsed = await receive(request, cfg, ParsedRequest, state.record)
    if isinstance(parsed, web.Response):
        return parsed, parsed.status
    prompt = parsed.prompt
    markers = parse_markers(prompt) if "[[" in prompt else ()
    rejected, limit_headers = state.admit(cfg, (prompt,), parsed.prompt_tokens)
    if rejected is not None:
        return rejected, rejected.status
    marked = [((parsed.model, prompt, parsed.schema is not None), markers)] if markers else []
    fault, code, delay, value = state.draw(cfg, marked, jitter=True)
    delay += cfg.latency
    if fault == "stall":
        delay += cfg.stall_seconds
    if delay > 0:
        await asyncio.sleep(delay)
    if fault is None or (fault == "status" and code == 200):
        return _answer(state, parsed, cfg, "ok", limit_headers), 200
    name = fault if fault != "status" else f"status_{code}"
    state.count_fault(name)
    if fault in HOSTILE:
        body = completion(state, parsed, cfg, fault)
        response = await hostile_response(request, fault, code, value, body, cfg)
        return response, response.status
    if fault == "stall":
        return _answer(state, parsed, cfg, fault), 200
    if fault == "status" or fault == "error":
        return fault_error(code, name, cfg), code
    if fault == "reset":
        _abort(request)
        return web.Response(status=204), 0
    if fault == "malformed":
        return web.Response(body=_MALFORMED_BODY, headers={**JSON_HEADERS, "X-Sim-Fault": fault}), 200
    if fault == "error200":
        body = {
            "error": {
                "code": 502,
                "message": "Provider returned error (simulated)",
                "metadata": {"provider_name": "polars-llm-sim"},
            }
        }
        return web.Response(body=orjson.dumps(body), headers={**JSON_HEADERS, "X-Sim-Fault": fault}), 200
    if fault == "truncated":
        return await _truncated(state, request, parsed, cfg), 200
    return _answer(state, parsed, cfg, fault), 200


def completion(state: SimState, parsed: ParsedRequest, cfg: SimConfig, fault: str) -> dict[str, Any]:
    """The body of a chat completion answering ``parsed`` (as ``fault`` bends it)."""
    finish = "stop"
    content: str | None
    if fault == "content_filter":
        content, finish = None, "content_filter"
    elif parsed.text_mode != "text" and fault == "bad_json":
        content = _BAD_JSON
    elif parsed.text_mode != "text" and fault == "wrong_schema":
        content = _WRONG_SCHEMA
    else:
        content = parsed.content()
        if fault == "length":
            content, finish = content[: max(1, len(content) // 2)], "length"
    if (
        content is not None
        and cfg.honor_max_tokens
        and parsed.max_tokens is not None
        and count_tokens(content) > parsed.max_tokens
    ):
        content, finish = content[: parsed.max_tokens * 4], "length"
    prompt_tokens = parsed.prompt_tokens
    completion_tokens = count_tokens(content)
    cost = prompt_tokens * cfg.prompt_price + completion_tokens * cfg.completion_price
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cfg.report_cost:
        usage["cost"] = cost
    if cfg.reasoning_ratio:
        usage["completion_tokens_details"] = {
            "reasoning_tokens": int(completion_tokens * cfg.reasoning_ratio)
        }
    if cfg.cached_ratio:
        usage["prompt_tokens_details"] = {"cached_tokens": int(prompt_tokens * cfg.cached_ratio)}
    return {
        "id": f"gen-sim-{state.next_id()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": parsed.model,
        "provider": "polars-llm-sim",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish,
            }
        ],
        "usage": usage,
    }


def _answer(
    state: SimState, parsed: ParsedRequest, cfg: SimConfig, fault: str, extra: dict[str, str] | None = None
) -> web.Response:
    body = completion(state, parsed, cfg, fault)
    headers = {**JSON_HEADERS, **extra} if extra else JSON_HEADERS
    if fault == "empty":
        body["choices"] = []
        headers = {**JSON_HEADERS, "X-Sim-Fault": fault}
    else:
        usage = body["usage"]
        state.answered(cfg, usage["prompt_tokens"], usage["completion_tokens"])
        if fault != "ok":
            headers = {**JSON_HEADERS, "X-Sim-Fault": fault}
    return web.Response(body=orjson.dumps(body), headers=headers)


async def _truncated(
    state: SimState, request: web.Request, parsed: ParsedRequest, cfg: SimConfig
) -> web.StreamResponse:
    full = orjson.dumps(completion(state, parsed, cfg, "truncated"))
    cut = full[: len(full) // 2]
    if not cfg.truncate_close:
        return web.Response(body=cut, headers={**JSON_HEADERS, "X-Sim-Fault": "truncated"})
    response = web.StreamResponse(headers={**JSON_HEADERS, "X-Sim-Fault": "truncated"})
    response.content_length = len(full)
    await response.prepare(request)
    await response.write(cut)
    transport = request.transport
    if transport is not None:
        transport.close()  # flushes what was written, then FIN: the body ends early
    return response


def _abort(request: web.Request) -> None:
    """Drop the connection with a TCP RST and no response at all."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    transport.abort()
