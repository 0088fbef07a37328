"""Request handling of the simulator: parsing, admission (auth, limits), faults, answers and counters.

The :class:`Engine` holds all mutable state. Its handlers run on the server's event loop; the counters
are guarded by a lock so :meth:`Engine.stats`, :meth:`Engine.reset` and :meth:`Engine.configure` can be
called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
import time
from collections import deque
from typing import Any, Final

import orjson
from aiohttp import web

from ..exceptions import ConfigError
from ._batches import BatchAPI
from ._embeddings import handle_embeddings
from ._hostile import HOSTILE, hostile_response
from ._limiter import Limiter
from ._options import FAULT_RATES, LIVE_FIXED, SimConfig
from ._outputs import count_tokens
from ._wire import (
    JSON_HEADERS,
    BadRequest,
    Marker,
    ParsedRequest,
    error_response,
    parse_markers,
    retry_headers,
)

__all__ = ["Engine"]

_MALFORMED_BODY: Final = b'<html><body><h1>upstream sent garbage</h1> {"id": oops</body></html>'
_BAD_JSON: Final = 'Sure! Here is the JSON you asked for: {"answer": '
_WRONG_SCHEMA: Final = '["this", "does", "not", "match", "the", "schema"]'
_LINGER_RST: Final = struct.pack("ii", 1, 0)


class Engine:
    """State and handlers of one simulated server."""

    def __init__(self, config: SimConfig) -> None:
        self._lock = threading.Lock()
        self.config = config
        self._rng = random.Random(config.seed)
        self._burst_until = time.monotonic() + config.burst_seconds if config.burst_429 else 0.0
        self._burst_left = config.burst_requests
        self._started = time.monotonic()
        self._zero()
        self.batches = BatchAPI(self)

    def _zero(self) -> None:
        self._requests = 0
        self._ok = 0
        self._status_counts: dict[str, int] = {}
        self._faults: dict[str, int] = {}
        self._per_prompt: dict[str, int] = {}
        self._attempts: dict[tuple[str, str, bool], int] = {}
        self._max_in_flight = 0
        self._in_flight = 0
        self._cancelled = 0
        self._tokens_in = 0
        self._tokens_out = 0
        self._cost = 0.0
        self._next_id = 0
        self._limiter = Limiter()
        self._embedding_requests = 0
        self._embedding_inputs = 0
        self._log: deque[dict[str, Any]] = deque(maxlen=self.config.request_log)

    # ----------------------------------------------------------------- control (any thread)

    def stats(self, per_prompt: bool = True) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {
                "requests": self._requests,
                "ok": self._ok,
                "status_counts": dict(self._status_counts),
                "unique_prompts": len(self._per_prompt),
                "max_in_flight": self._max_in_flight,
                "in_flight": self._in_flight,
                "cancelled": self._cancelled,
                "tokens_in": self._tokens_in,
                "tokens_out": self._tokens_out,
                "cost": self._cost,
                "faults": dict(self._faults),
                "burst_active": time.monotonic() < self._burst_until,
                "embedding_requests": self._embedding_requests,
                "embedding_inputs": self._embedding_inputs,
                "logged_requests": len(self._log),
            }
            if per_prompt:
                out["per_prompt"] = dict(self._per_prompt)
        out["batch"] = self.batches.stats()
        if not per_prompt:
            del out["batch"]["per_prompt"]
        return out

    def requests(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The last request bodies received (oldest first): ``{"path", "body"}`` each, at most
        ``request_log`` of them; ``limit`` keeps the last ``limit``."""
        with self._lock:
            log = list(self._log)
        return log[-limit:] if limit else log

    def _record(self, path: str, body: Any) -> None:
        if self._log.maxlen:
            with self._lock:
                self._log.append({"path": path, "body": body})

    def reset(self) -> None:
        """Zero every counter, forget per-prompt attempts and rate-limit windows, reseed the RNG."""
        with self._lock:
            in_flight = self._in_flight
            self._zero()
            self._in_flight = in_flight
            self._burst_left = self.config.burst_requests
            self._rng = random.Random(self.config.seed)
        self.batches.reset()

    def configure(self, **changes: Any) -> SimConfig:
        fixed = LIVE_FIXED.intersection(changes)
        if fixed:
            raise ConfigError(f"cannot change {', '.join(sorted(fixed))} while the server runs")
        with self._lock:
            new = self.config.replace(**changes)
            if "seed" in changes:
                self._rng = random.Random(new.seed)
            if "request_log" in changes:
                self._log = deque(self._log, maxlen=new.request_log)
            if new.burst_429 and ("burst_429" in changes or "burst_seconds" in changes):
                self._burst_until = time.monotonic() + new.burst_seconds
            elif not new.burst_429:
                self._burst_until = 0.0
            if "burst_requests" in changes:
                self._burst_left = new.burst_requests
            self.config = new
        return new

    # ------------------------------------------------------------------- HTTP handlers

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)  # batch uploads are streamed, not capped
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/chat/completions", self.chat)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/embeddings", self.embeddings)
        app.router.add_get("/requests", self.requests_endpoint)
        app.router.add_get("/v1/requests", self.requests_endpoint)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/stats", self.stats_endpoint)
        app.router.add_get("/v1/stats", self.stats_endpoint)
        app.router.add_post("/reset", self.reset_endpoint)
        app.router.add_post("/v1/reset", self.reset_endpoint)
        app.router.add_get("/config", self.config_endpoint)
        app.router.add_post("/configure", self.configure_endpoint)
        self.batches.add_routes(app)
        return app

    async def models(self, request: web.Request) -> web.Response:
        cfg = self.config
        if cfg.api_key is not None and request.headers.get("Authorization") != f"Bearer {cfg.api_key}":
            return error_response(401)
        pricing = {"prompt": f"{cfg.prompt_price:.12f}", "completion": f"{cfg.completion_price:.12f}"}
        data = [
            {
                "id": m,
                "object": "model",
                "created": 0,
                "owned_by": "polars-llm-sim",
                "pricing": pricing,
                "top_provider": {"max_completion_tokens": cfg.max_output},
            }
            for m in cfg.models
        ]
        return web.Response(body=orjson.dumps({"object": "list", "data": data}), headers=JSON_HEADERS)

    async def stats_endpoint(self, request: web.Request) -> web.Response:
        per_prompt = request.query.get("per_prompt", "1").lower() not in ("0", "false", "no")
        return web.Response(body=orjson.dumps(self.stats(per_prompt=per_prompt)), headers=JSON_HEADERS)

    async def requests_endpoint(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "0")) or None
        except ValueError:
            return error_response(400, "limit must be an integer")
        return web.Response(body=orjson.dumps(self.requests(limit)), headers=JSON_HEADERS)

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        return await self._counted(request, handle_embeddings)

    async def reset_endpoint(self, request: web.Request) -> web.Response:
        self.reset()
        return web.Response(body=b'{"ok":true}', headers=JSON_HEADERS)

    async def config_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.config.to_dict()), headers=JSON_HEADERS)

    async def configure_endpoint(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("body must be a JSON object of option changes")
            new = self.configure(**changes)
        except (ValueError, TypeError) as exc:
            return error_response(400, str(exc))
        return web.Response(body=orjson.dumps(new.to_dict()), headers=JSON_HEADERS)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._counted(request, Engine._chat)

    async def _counted(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Run ``handler(self, request, cfg)`` with the request, in-flight and status counters."""
        cfg = self.config
        lock = self._lock
        with lock:
            self._requests += 1
            self._in_flight += 1
            if self._in_flight > self._max_in_flight:
                self._max_in_flight = self._in_flight
        status = 0
        try:
            response, status = await handler(self, request, cfg)
            return response
        except asyncio.CancelledError:
            with lock:
                self._cancelled += 1
            raise
        finally:
            with lock:
                self._in_flight -= 1
                if status:
                    key = str(status)
                    self._status_counts[key] = self._status_counts.get(key, 0) + 1

    # ------------------------------------------------------------------ request logic

    async def _chat(self, request: web.Request, cfg: SimConfig) -> tuple[web.StreamResponse, int]:
        if cfg.api_key is not None and request.headers.get("Authorization") != f"Bearer {cfg.api_key}":
            return error_response(401), 401
        if cfg.fail_mode is not None:
            return error_response(cfg.fail_mode), cfg.fail_mode
        try:
            body = orjson.loads(await request.read())
            self._record(request.path, body)
            parsed = ParsedRequest(body)
        except orjson.JSONDecodeError:
            return error_response(400, "request body is not valid JSON"), 400
        except BadRequest as exc:
            return error_response(400, str(exc)), 400
        prompt = parsed.prompt
        markers = parse_markers(prompt) if "[[" in prompt else ()
        now = time.monotonic()
        with self._lock:
            self._per_prompt[prompt] = self._per_prompt.get(prompt, 0) + 1
            rejected, limit_headers = self._admit(cfg, parsed.prompt_tokens, now)
            if rejected is None:
                attempt = 0
                if markers:
                    key = (parsed.model, prompt, parsed.schema is not None)
                    attempt = self._attempts.get(key, 0) + 1
                    self._attempts[key] = attempt
                fault, code, delay, value = self._choose_fault(cfg, markers, attempt)
                if cfg.jitter:
                    delay += self._rng.uniform(-cfg.jitter, cfg.jitter)
        if rejected is not None:
            return rejected, rejected.status
        delay += cfg.latency
        if fault == "stall":
            delay += cfg.stall_seconds
        if delay > 0:
            await asyncio.sleep(delay)
        if fault is None or (fault == "status" and code == 200):
            return self._answer(parsed, cfg, "ok", limit_headers), 200
        name = fault if fault != "status" else f"status_{code}"
        with self._lock:
            self._count_fault(name)
        if fault in HOSTILE:
            body = self._completion(parsed, cfg, fault)
            response = await hostile_response(request, fault, code, value, body, cfg)
            return response, response.status
        if fault == "stall":
            return self._answer(parsed, cfg, fault), 200
        if fault == "status" or fault == "error":
            headers = {"X-Sim-Fault": name}
            if code == 429:
                headers.update(retry_headers(1.0))
            elif code == 503 and cfg.error_retry_after is not None:
                headers.update(retry_headers(cfg.error_retry_after))
            return error_response(code, headers=headers), code
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
            return await self._truncated(request, parsed, cfg), 200
        return self._answer(parsed, cfg, fault), 200

    def _admit(self, cfg: SimConfig, tokens: int, now: float) -> tuple[web.Response | None, dict[str, str]]:
        """Burst mode, then the request cap, then the token cap (lock held); see :mod:`._limiter`."""
        if (self._burst_until and now < self._burst_until) or self._burst_left > 0:
            self._burst_left = max(0, self._burst_left - 1)
            self._count_fault("burst_429")
            hint = retry_headers(cfg.burst_retry_after) if cfg.burst_retry_after else {}
            return error_response(429, headers=hint), {}
        rejected, headers, fault = self._limiter.admit(cfg, tokens, now)
        if fault:
            self._count_fault(fault)
        return rejected, headers

    def _choose_fault(
        self, cfg: SimConfig, markers: tuple[Marker, ...], attempt: int
    ) -> tuple[str | None, int, float, str]:
        """Markers first (first active one wins), then one draw for the global fault rates (lock held)."""
        fault: str | None = None
        code = 0
        delay = 0.0
        value = ""
        for kind, status, first_n, extra, text in markers:
            if kind == "delay":
                delay += extra
            elif fault is None and (first_n is None or attempt <= first_n):
                fault, code, value = kind, status, text
        if fault is not None:
            return fault, code, delay, value
        u = -1.0
        for name in FAULT_RATES:
            rate = getattr(cfg, name)
            if rate:
                if u < 0:
                    u = self._rng.random()
                if u < rate:
                    kind = _RATE_FAULTS[name]
                    if kind == "error":
                        code = self._rng.choice(cfg.error_statuses)
                    return kind, code, delay, ""
                u -= rate
        return None, 0, delay, ""

    def _count_fault(self, name: str) -> None:
        self._faults[name] = self._faults.get(name, 0) + 1

    def _completion(self, parsed: ParsedRequest, cfg: SimConfig, fault: str) -> dict[str, Any]:
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
        self._next_id += 1
        return {
            "id": f"gen-sim-{self._next_id}",
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
        self, parsed: ParsedRequest, cfg: SimConfig, fault: str, extra: dict[str, str] | None = None
    ) -> web.Response:
        body = self._completion(parsed, cfg, fault)
        headers = {**JSON_HEADERS, **extra} if extra else JSON_HEADERS
        if fault == "empty":
            body["choices"] = []
            headers = {**JSON_HEADERS, "X-Sim-Fault": fault}
        else:
            usage = body["usage"]
            with self._lock:
                self._ok += 1
                self._tokens_in += usage["prompt_tokens"]
                self._tokens_out += usage["completion_tokens"]
                # what the answer cost, reported or not (the stats are the ground truth for tests)
                self._cost += (
                    usage["prompt_tokens"] * cfg.prompt_price
                    + usage["completion_tokens"] * cfg.completion_price
                )
                # the answer's tokens count toward the token window too
                self._limiter.add_tokens(cfg, usage["completion_tokens"], time.monotonic())
            if fault != "ok":
                headers = {**JSON_HEADERS, "X-Sim-Fault": fault}
        return web.Response(body=orjson.dumps(body), headers=headers)

    async def _truncated(
        self, request: web.Request, parsed: ParsedRequest, cfg: SimConfig
    ) -> web.StreamResponse:
        full = orjson.dumps(self._completion(parsed, cfg, "truncated"))
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


_RATE_FAULTS: Final = {
    "reset_rate": "reset",
    "stall_rate": "stall",
    "error_rate": "error",
    "malformed_rate": "malformed",
    "truncated_rate": "truncated",
    "error_in_200_rate": "error200",
    "empty_choices_rate": "empty",
}


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
