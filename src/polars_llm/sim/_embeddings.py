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
import time
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web

from ._outputs import expected_embedding
from ._wire import JSON_HEADERS, BadRequest, ParsedEmbeddings, error_response, parse_markers, retry_headers

if TYPE_CHECKING:
    from ._engine import Engine
    from ._options import SimConfig

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


def _faults(engine: Engine, cfg: SimConfig, parsed: ParsedEmbeddings) -> tuple[str | None, int, float]:
    """The fault for this request: markers of its inputs first, then the global rates (lock held)."""
    fault: str | None = None
    code, delay = 0, 0.0
    for text in parsed.inputs:
        markers = parse_markers(text) if "[[" in text else ()
        if not markers:
            continue
        key = (parsed.model, text, "embeddings")
        attempt = engine._attempts.get(key, 0) + 1
        engine._attempts[key] = attempt
        for kind, status, first_n, extra, _ in markers:
            if kind == "delay":
                delay += extra
            elif fault is None and (first_n is None or attempt <= first_n):
                fault, code = kind, status
    if fault is None:
        fault, code, more, _ = engine._choose_fault(cfg, (), 0)
        delay += more
    return fault, code, delay


async def handle_embeddings(
    engine: Engine, request: web.Request, cfg: SimConfig
) -> tuple[web.StreamResponse, int]:
    if cfg.api_key is not None and request.headers.get("Authorization") != f"Bearer {cfg.api_key}":
        return error_response(401), 401
    if cfg.fail_mode is not None:
        return error_response(cfg.fail_mode), cfg.fail_mode
    try:
        body = orjson.loads(await request.read())
        engine._record(request.path, body)
        parsed = ParsedEmbeddings(body, cfg.embedding_dimensions)
    except orjson.JSONDecodeError:
        return error_response(400, "request body is not valid JSON"), 400
    except BadRequest as exc:
        return error_response(400, str(exc)), 400
    with engine._lock:
        engine._embedding_requests += 1
        for text in parsed.inputs:
            engine._per_prompt[text] = engine._per_prompt.get(text, 0) + 1
        rejected, _ = engine._admit(cfg, parsed.prompt_tokens, time.monotonic())
        if rejected is None:
            fault, code, delay = _faults(engine, cfg, parsed)
            if cfg.jitter:
                delay += engine._rng.uniform(-cfg.jitter, cfg.jitter)
    if rejected is not None:
        return rejected, rejected.status
    delay += cfg.latency + (cfg.stall_seconds if fault == "stall" else 0.0)
    if delay > 0:
        await asyncio.sleep(delay)
    if fault is not None and not (fault == "status" and code == 200):
        name = fault if fault != "status" else f"status_{code}"
        with engine._lock:
            engine._count_fault(name)
        headers = {**JSON_HEADERS, "X-Sim-Fault": name}
        if fault in ("status", "error"):
            if code == 429:
                headers.update(retry_headers(1.0))
            elif code == 503 and cfg.error_retry_after is not None:
                headers.update(retry_headers(cfg.error_retry_after))
            return error_response(code, headers=headers), code
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
    with engine._lock:
        engine._ok += 1
        engine._embedding_inputs += len(parsed.inputs)
        engine._tokens_in += tokens
        engine._cost += cost
    headers = JSON_HEADERS if fault is None else {**JSON_HEADERS, "X-Sim-Fault": fault}
    return web.Response(body=raw, headers=headers), 200
