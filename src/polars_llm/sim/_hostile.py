"""Hostile answers of the simulator: everything a provider has been seen to send besides a clean answer.

Each is chosen per prompt by a marker (see the package docstring); ``body`` is the completion the
simulator would have sent, which most of them bend:

* content shapes: ``content_parts`` (the text as a list of text parts), ``content_number`` (``42``),
  ``content_object`` (``{"answer": 42}``), ``content_image`` (a list without text parts), ``refusal``
  (``content`` null, ``refusal`` set), ``length_valid`` (the whole answer, ``finish_reason="length"``),
  ``choices_null``, ``message_null``;
* usage: ``usage_string`` (counts and cost as strings), ``usage_negative`` (negative counts and cost);
* bodies: ``html`` (a 200 HTML page), ``empty_body`` (a 200 with nothing), ``short_body`` (a
  ``Content-Length`` larger than what is sent, then the connection closes), ``stall_body`` (half the
  body, then a pause of ``stall_seconds``), ``huge`` / ``huge_chunked`` (11 MiB, with or without a
  ``Content-Length``);
* statuses: ``retry_after:VALUE`` / ``retry_after_ms:VALUE`` (a 429 whose hint is VALUE verbatim, e.g.
  ``soon``, ``inf``, ``100000000``), ``credits:SOURCE`` (OpenRouter's 402 without ``Retry-After``,
  ``metadata.limit_source`` SOURCE, default ``openrouter_credits`` with reason
  ``weight_exceeds_budget``), ``credits_wait`` (its in-flight 402 with ``Retry-After: 1``),
  ``redirect:CODE`` (a 3xx to another address), ``html_error:CODE`` (an error status with an HTML page).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import orjson
from aiohttp import web

from ._options import SimConfig
from ._wire import HOSTILE_MARKERS, JSON_HEADERS, VALUE_MARKERS, error_body

__all__ = ["HOSTILE", "hostile_response"]

HOSTILE: Final = HOSTILE_MARKERS | frozenset(VALUE_MARKERS)
"""Every marker whose answer :func:`hostile_response` builds."""
REFUSAL: Final = "I'm sorry, but I can't help with that request."
HUGE_BYTES: Final = 11 * 2**20
_HTML: Final = (
    "<!DOCTYPE html><html><head><title>{title}</title></head><body><h1>{title}</h1>"
    "<p>The upstream server is unavailable (simulated).</p></body></html>"
)
_REASONS: Final = {
    "openrouter_credits": "weight_exceeds_budget",
    "openrouter_in_flight_budget": "in_flight_budget_exhausted",
    "openrouter_key_limit": "key_limit_exceeded",
}


def _bend(fault: str, body: dict[str, Any]) -> dict[str, Any]:
    """The completion ``body`` changed the way ``fault`` says."""
    choice = body["choices"][0]
    message = choice["message"]
    text = message["content"] or ""
    if fault == "content_parts":
        half = len(text) // 2
        message["content"] = [{"type": "text", "text": text[:half]}, {"type": "text", "text": text[half:]}]
    elif fault == "content_number":
        message["content"] = 42
    elif fault == "content_object":
        message["content"] = {"answer": 42}
    elif fault == "content_image":
        message["content"] = [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]
    elif fault == "refusal":
        message["content"], message["refusal"] = None, REFUSAL
    elif fault == "length_valid":
        choice["finish_reason"] = "length"
    elif fault == "choices_null":
        body["choices"] = None
    elif fault == "message_null":
        choice["message"] = None
    elif fault == "usage_string":
        usage = body["usage"]
        for name in ("prompt_tokens", "completion_tokens", "total_tokens", "cost"):
            usage[name] = str(usage[name])
    elif fault == "usage_negative":
        body["usage"].update(prompt_tokens=-5, completion_tokens=-1, total_tokens=-6, cost=-0.01)
    return body


async def _partial(request: web.Request, full: bytes, *, stall: float | None) -> web.StreamResponse:
    """Announce ``full``'s length, send half of it, then close (or stall, then send the rest)."""
    response = web.StreamResponse(headers={**JSON_HEADERS, "X-Sim-Fault": "partial"})
    response.content_length = len(full)
    await response.prepare(request)
    await response.write(full[: len(full) // 2])
    if stall is None:
        transport = request.transport
        if transport is not None:
            transport.close()
        return response
    await asyncio.sleep(stall)
    with contextlib.suppress(ConnectionError, RuntimeError):
        await response.write(full[len(full) // 2 :])
        await response.write_eof()
    return response


async def _huge(request: web.Request, body: dict[str, Any], *, chunked: bool) -> web.StreamResponse:
    body["choices"][0]["message"]["content"] = "x" * HUGE_BYTES
    raw = orjson.dumps(body)
    response = web.StreamResponse(headers={**JSON_HEADERS, "X-Sim-Fault": "huge"})
    if chunked:
        response.enable_chunked_encoding()
    else:
        response.content_length = len(raw)
    await response.prepare(request)
    with contextlib.suppress(ConnectionError, RuntimeError):
        for lo in range(0, len(raw), 2**20):
            await response.write(raw[lo : lo + 2**20])
        await response.write_eof()
    return response


async def hostile_response(
    request: web.Request, fault: str, code: int, value: str, body: dict[str, Any], cfg: SimConfig
) -> web.StreamResponse:
    """The response for hostile ``fault`` (``code`` and ``value`` from its marker)."""
    tag = {"X-Sim-Fault": fault}
    if fault in ("retry_after", "retry_after_ms"):
        name = "Retry-After" if fault == "retry_after" else "retry-after-ms"
        return web.Response(status=429, body=error_body(429), headers={**JSON_HEADERS, **tag, name: value})
    if fault in ("credits", "credits_wait"):
        source = value or ("openrouter_in_flight_budget" if fault == "credits_wait" else "openrouter_credits")
        meta = {"reason": _REASONS.get(source, "insufficient_credits"), "limit_source": source}
        meta["remedy_hint"] = "Add credits at https://openrouter.ai/settings/credits (simulated)."
        message = "This request requires more credits, or fewer max_tokens (simulated)"
        payload = {"error": {"code": 402, "message": message, "metadata": meta}}
        headers = {**JSON_HEADERS, **tag}
        if fault == "credits_wait":
            headers["Retry-After"] = "1"
        return web.Response(status=402, body=orjson.dumps(payload), headers=headers)
    if fault == "redirect":
        location = f"{request.scheme}://{request.host}/moved/v1/chat/completions"
        return web.Response(status=code, headers={**tag, "Location": location})
    if fault in ("html", "html_error"):
        status = code or 200
        page = _HTML.format(title=f"{status} Bad Gateway" if status >= 500 else "Welcome")
        return web.Response(status=status, text=page, content_type="text/html", headers=tag)
    if fault == "empty_body":
        return web.Response(status=200, body=b"", headers={**JSON_HEADERS, **tag})
    if fault in ("short_body", "stall_body"):
        full = orjson.dumps(body)
        return await _partial(request, full, stall=cfg.stall_seconds if fault == "stall_body" else None)
    if fault in ("huge", "huge_chunked"):
        return await _huge(request, body, chunked=fault == "huge_chunked")
    return web.Response(body=orjson.dumps(_bend(fault, body)), headers={**JSON_HEADERS, **tag})
