"""``POST /v1/embeddings`` of the simulator: deterministic vectors, OpenAI's wire format, the same faults.

The answer is ``{"object": "list", "data": [{"object": "embedding", "index": i, "embedding": [...]}],
"model", "usage": {"prompt_tokens", "total_tokens", "cost"}}`` with :func:`expected_embedding` vectors
(``dimensions`` from the request, else ``embedding_dimensions``); ``encoding_format: "base64"`` sends
little-endian float32 bytes in base64 instead of a list.

Markers in any input apply to the whole request, as a provider rejects a whole batch for one bad input:
``[[status:400]]`` in one input makes every request holding it a 400, which is how a client's batch
splitting is tested. ``:N`` counts attempts per ``(model, input)``; among the inputs, the first active
marker wins; ``[[delay:S]]`` markers add up. The global fault rates apply once per request.
"""

from __future__ import annotations

import array
import asyncio
import base64
import sys
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web

from ._vectors import expected_embedding
from ._wire import JSON_HEADERS, ParsedEmbeddings, fault_error, parse_markers, receive

if TYPE_CHECKING:
    from ._options import SimConfig
    from ._state import SimState

__all__ = ["handle_embeddings"]

_MALFORMED: Final = b'<html><body>upstream sent garbage {"data": [</body></html>'


def _vector(model: str, text: str, dimensions: int, encoding: str) -> Any:
    values = expected_embedding(model, text, dimensions)
    if encoding == "float":
        return values
    packed = array.array("f", values)
    if sys.byteorder != "little":  # pragma: no cover
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


async def handle_embeddings(
    state: SimState, request: web.Request, cfg: SimConfig
) -> tuple[web.StreamResponse, int]:
    parsed = await receive(
        request, cfg, lambda body: ParsedEmbeddings(body, cfg.embedding_dimensions), state.record
    )
    if isinstance(parsed, web.Response):
        return parsed, parsed.status
    rejected, _ = state.admit(cfg, parsed.inputs, parsed.prompt_tokens, embeddings=True)
    if rejected is not None:
        return rejected, rejected.status
    marked = [
        ((parsed.model, text, "embeddings"), markers)
        for text in parsed.inputs
        if (markers := parse_markers(text) if "[[" in text else ())
    ]
    fault, code, delay, _ = state.draw(cfg, marked, jitter=True)
    delay += cfg.latency + (cfg.stall_seconds if fault == "stall" else 0.0)
    if delay > 0:
        await asyncio.sleep(delay)
    if fault is not None and not (fault == "status" and code == 200):
        name = fault if fault != "status" else f"status_{code}"
        state.count_fault(name)
        headers = {**JSON_HEADERS, "X-Sim-Fault": name}
        if fault in ("status", "error"):
            return fault_error(code, name, cfg), code
        if fault == "reset":
            transport = request.transport
            if transport is not None:
                transport.abort()
            return web.Response(status=204), 0
        if fault == "malformed":
            return web.Response(body=_MALFORMED, headers=headers), 200
        if fault == "error200":
            err = {"error": {"code": 502, "message": "Provider returned error (simulated)"}}
            return web.Response(body=orjson.dumps(err), headers=headers), 200
    tokens = parsed.prompt_tokens
    cost = tokens * cfg.prompt_price
    model, dims, encoding = parsed.model, parsed.dimensions, parsed.encoding
    data = [
        {"object": "embedding", "index": i, "embedding": _vector(model, text, dims, encoding)}
        for i, text in enumerate(parsed.inputs)
        if fault != "empty"
    ]
    raw = orjson.dumps(
        {
            "object": "list",
            "data": data,
            "model": parsed.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens, "cost": cost},
        }
    )
    if fault == "truncated":
        raw = raw[: len(raw) // 2]
    state.embedded(len(parsed.inputs), tokens, cost)
    headers = JSON_HEADERS if fault is None else {**JSON_HEADERS, "X-Sim-Fault": fault}
    return web.Response(body=raw, headers=headers), 200
