"""The simulator's application: its routes, and the control calls (stats, reset, configure).

:class:`SimApp` wires the endpoints (chat in :mod:`._chat`, embeddings in :mod:`._embeddings`, files and
batches in :mod:`._batches`) to one :class:`~._state.SimState`, the counters and draws they share. The
handlers run on the server's event loop; the control calls may come from any thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from ._batches import BatchAPI
from ._chat import handle_chat
from ._embeddings import handle_embeddings
from ._options import SimConfig
from ._state import SimState
from ._wire import JSON_HEADERS, error_response, wrong_key

__all__ = ["SimApp"]

Handler = Callable[[SimState, web.Request, SimConfig], Awaitable[tuple[web.StreamResponse, int]]]


class SimApp:
    """State and handlers of one simulated server."""

    def __init__(self, config: SimConfig) -> None:
        self.state = SimState(config)
        self.batches = BatchAPI(self.state)

    @property
    def config(self) -> SimConfig:
        return self.state.config

    # ----------------------------------------------------------------- control (any thread)

    def stats(self, per_prompt: bool = True) -> dict[str, Any]:
        out = self.state.stats(per_prompt=per_prompt)
        out["batch"] = self.batches.stats()
        if not per_prompt:
            del out["batch"]["per_prompt"]
        return out

    def requests(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The last request bodies received (oldest first): ``{"path", "body"}`` each, at most
        ``request_log`` of them; ``limit`` keeps the last ``limit``."""
        return self.state.requests(limit)

    def reset(self) -> None:
        """Zero every counter, forget per-prompt attempts and rate-limit windows, reseed the RNG."""
        self.state.reset()
        self.batches.reset()

    def configure(self, **changes: Any) -> SimConfig:
        return self.state.configure(**changes)

    # ------------------------------------------------------------------- HTTP handlers

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)  # batch uploads are streamed, not capped
        served = [
            ("POST", "/chat/completions", self.chat),
            ("POST", "/embeddings", self.embeddings),
            ("GET", "/requests", self.requests_endpoint),
            ("GET", "/stats", self.stats_endpoint),
            ("POST", "/reset", self.reset_endpoint),
        ]
        for method, path, handler in served:  # each under /v1 and at the root
            app.router.add_route(method, f"/v1{path}", handler)
            app.router.add_route(method, path, handler)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/config", self.config_endpoint)
        app.router.add_post("/configure", self.configure_endpoint)
        self.batches.add_routes(app)
        return app

    async def models(self, request: web.Request) -> web.Response:
        cfg = self.config
        if wrong_key(request, cfg):
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
        return await self._counted(request, handle_chat)

    async def _counted(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Run ``handler(state, request, cfg)`` with the request, in-flight and status counters."""
        cfg = self.config
        self.state.began()
        status, cancelled = 0, False
        try:
            response, status = await handler(self.state, request, cfg)
            return response
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            self.state.ended(status, cancelled=cancelled)
