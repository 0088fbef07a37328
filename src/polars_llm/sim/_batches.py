"""The simulator's Batch API: files and batches endpoints following OpenAI's published protocol.

``POST /v1/files`` (multipart: ``purpose=batch``, ``file``), ``GET /v1/files/{id}``,
``GET /v1/files/{id}/content``, ``DELETE /v1/files/{id}``, ``POST /v1/batches``, ``GET /v1/batches/{id}``,
``POST /v1/batches/{id}/cancel`` and ``GET /v1/batches`` (newest first, ``limit`` and ``after``).

A batch moves ``validating`` → ``in_progress`` → ``finalizing`` → its end over ``batch_seconds`` (checked
whenever it is read); with ``batch_seconds=None`` it stays ``in_progress`` until
:meth:`BatchAPI.finish` (``server.finish_batches()``). Its end is ``batch_outcome``: ``completed`` (every
request answered), ``expired`` (the first ``batch_done_share`` of the requests answered, the rest in the
error file with code ``batch_expired``), ``failed`` (no request run; ``errors`` says why) or, after a
cancel, ``cancelled`` (the first ``batch_done_share`` answered, the rest in no file). An input file that
breaks the protocol (bad JSON, a duplicate ``custom_id``, another ``url`` or ``method``, several models,
more than ``batch_max_requests`` lines) fails the batch at validation.

Each request is answered exactly as ``/v1/chat/completions`` would answer it (same content, same fault
markers, the same ``:N`` attempt counting), with ``usage.cost`` at ``batch_price_factor`` of the online
cost. Answers go to the output file in shuffled order; HTTP errors (``[[status:400]]``…) to the error file
as ``response.status_code`` ≥ 400. ``[[batch_omit]]`` leaves a request out of both files.
"""

from __future__ import annotations

import math
import random
import secrets
import threading
import time
from typing import TYPE_CHECKING, Any, Final

import orjson
from aiohttp import web

from ._batch_data import ENDPOINT, SimBatch, SimFile, output_line, parse_input
from ._chat import completion
from ._wire import (
    JSON_HEADERS,
    BadRequest,
    ParsedRequest,
    error_body,
    error_response,
    parse_markers,
    refused,
)

if TYPE_CHECKING:
    from ._state import SimState

__all__ = ["BatchAPI"]

TERMINAL: Final = frozenset({"completed", "failed", "expired", "cancelled"})
_OMIT: Final = "[[batch_omit]]"
_EXPIRED_MESSAGE: Final = "This request could not be executed before the completion window expired."
# transport faults have no batch form: the request fails with a 500 line instead
_AS_500: Final = frozenset({"malformed", "truncated", "reset"})


class BatchAPI:
    """State and handlers of the files and batches endpoints of one simulated server."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self._lock = threading.Lock()
        self._token = secrets.token_hex(3)  # ids differ between servers, so caches never mix them up
        self._n = 0
        self.files: dict[str, SimFile] = {}
        self.batches: dict[str, SimBatch] = {}
        self.reset()

    def reset(self) -> None:
        """Zero the counters (files and batches are kept)."""
        with self._lock:
            self._stats: dict[str, Any] = {
                "uploads": 0,
                "upload_bytes": 0,
                "batches_created": 0,
                "batch_requests": 0,
                "batch_ok": 0,
                "batch_errors": 0,
                "batch_cost": 0.0,
                "cancels": 0,
                "calls": {},
                "per_prompt": {},
            }

    def stats(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self._stats)
            out["per_prompt"] = dict(out["per_prompt"])
            out["calls"] = dict(out["calls"])
            out["live"] = sum(1 for b in self.batches.values() if b.status not in TERMINAL)
        return out

    def list(self) -> list[dict[str, Any]]:
        """Every batch (oldest first), as ``GET /v1/batches/{id}`` would show it now."""
        with self._lock:
            now = time.monotonic()
            for batch in self.batches.values():
                self._advance(batch, now)
            return [b.info() for b in self.batches.values()]

    def finish(self, outcome: str | None = None) -> list[str]:
        """End every batch still running now with ``outcome`` (default: ``batch_outcome``); their ids."""
        if outcome not in (None, "completed", "expired", "failed", "cancelled"):
            raise ValueError(f"outcome must be completed, expired, failed or cancelled, got {outcome!r}")
        with self._lock:
            ended = []
            for batch in self.batches.values():
                if batch.status not in TERMINAL:
                    self._finalize(batch, outcome or self.state.config.batch_outcome)
                    ended.append(batch.id)
        return ended

    def add_routes(self, app: web.Application) -> None:
        for prefix in ("/v1", ""):
            app.router.add_post(f"{prefix}/files", self.upload)
            app.router.add_get(f"{prefix}/files/{{id}}", self.file_info)
            app.router.add_delete(f"{prefix}/files/{{id}}", self.file_delete)
            app.router.add_get(f"{prefix}/files/{{id}}/content", self.file_content)
            app.router.add_post(f"{prefix}/batches", self.create)
            app.router.add_get(f"{prefix}/batches", self.list_endpoint)
            app.router.add_get(f"{prefix}/batches/{{id}}", self.retrieve)
            app.router.add_post(f"{prefix}/batches/{{id}}/cancel", self.cancel)

    # ------------------------------------------------------------------------------- handlers

    def _refused(self, request: web.Request) -> web.Response | None:
        """Count the call (``calls``: {"POST /files": n, ...}, refused ones too), then refuse it if the
        Batch API is off (404), the key is wrong (401) or ``fail_mode`` is set."""
        route = request.match_info.route.resource
        name = f"{request.method} {route.canonical if route is not None else request.path}"
        name = name.replace("/v1/", "/")
        with self._lock:
            calls = self._stats["calls"]
            calls[name] = calls.get(name, 0) + 1
        cfg = self.state.config
        if not cfg.batch_api:
            return error_response(404, f"Not found: {request.method} {request.path}")
        return refused(request, cfg)

    def _id(self, kind: str) -> str:
        self._n += 1
        return f"{kind}{self._token}{self._n:05d}"

    async def upload(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        if not request.content_type.startswith("multipart/"):
            return error_response(400, "the file upload must be multipart/form-data")
        purpose, filename, data = None, "upload.jsonl", None
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if part.name == "purpose":
                purpose = (await part.text()).strip()  # type: ignore[union-attr]
            elif part.name == "file":
                filename = part.filename or filename  # type: ignore[union-attr]
                data = bytes(await part.read(decode=False))  # type: ignore[union-attr]
        if purpose is None or data is None:
            return error_response(400, "the upload needs the fields 'purpose' and 'file'")
        cfg = self.state.config
        if len(data) > cfg.batch_max_bytes:
            return error_response(413, f"file is {len(data)} bytes; at most {cfg.batch_max_bytes} allowed")
        with self._lock:
            file = SimFile(self._id("file-"), filename, purpose, data, int(time.time()))
            self.files[file.id] = file
            self._stats["uploads"] += 1
            self._stats["upload_bytes"] += len(data)
        return _json(file.info())

    def _file(self, request: web.Request) -> SimFile | web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        file = self.files.get(request.match_info["id"])
        if file is None:
            return error_response(404, f"No such File object: {request.match_info['id']}")
        return file

    async def file_info(self, request: web.Request) -> web.Response:
        file = self._file(request)
        return file if isinstance(file, web.Response) else _json(file.info())

    async def file_content(self, request: web.Request) -> web.Response:
        file = self._file(request)
        if isinstance(file, web.Response):
            return file
        return web.Response(body=file.data, headers={"Content-Type": "application/octet-stream"})

    async def file_delete(self, request: web.Request) -> web.Response:
        file = self._file(request)
        if isinstance(file, web.Response):
            return file
        with self._lock:
            self.files.pop(file.id, None)
        return _json({"id": file.id, "object": "file", "deleted": True})

    async def create(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error_response(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return error_response(400, "request body must be a JSON object")
        file = self.files.get(str(body.get("input_file_id")))
        if file is None:
            return error_response(400, f"input_file_id {body.get('input_file_id')!r} does not exist")
        if file.purpose != "batch":
            return error_response(400, f"input file {file.id} has purpose {file.purpose!r}, not 'batch'")
        if body.get("endpoint") != ENDPOINT:
            return error_response(400, f"endpoint must be {ENDPOINT!r}, got {body.get('endpoint')!r}")
        if body.get("completion_window") != "24h":
            return error_response(
                400, f"completion_window must be '24h', got {body.get('completion_window')!r}"
            )
        requests, invalid, model = parse_input(file.data, self.state.config.batch_max_requests)
        with self._lock:
            batch = SimBatch(
                id=self._id("batch_"),
                input_file_id=file.id,
                metadata=body.get("metadata"),
                seconds=self.state.config.batch_seconds,
                started=time.monotonic(),
                created_at=int(time.time()),
                requests=requests,
                invalid=invalid,
                model=model,
            )
            self.batches[batch.id] = batch
            self._stats["batches_created"] += 1
            return _json(batch.info())

    def _named_batch(self, request: web.Request) -> SimBatch | web.Response:
        """The batch the URL names, advanced to now, or the 404 answer (lock held)."""
        batch = self.batches.get(request.match_info["id"])
        if batch is None:
            return error_response(404, f"No such Batch object: {request.match_info['id']}")
        self._advance(batch, time.monotonic())
        return batch

    async def retrieve(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        with self._lock:
            batch = self._named_batch(request)
            return batch if isinstance(batch, web.Response) else _json(batch.info())

    async def cancel(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        with self._lock:
            batch = self._named_batch(request)
            if isinstance(batch, web.Response):
                return batch
            if batch.status in TERMINAL:
                return error_response(409, f"Cannot cancel a batch with status '{batch.status}'.")
            if batch.status != "cancelling":
                batch.status = "cancelling"
                batch.times["cancelling"] = int(time.time())
                self._stats["cancels"] += 1
            return _json(batch.info())

    async def list_endpoint(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused is not None:
            return refused
        try:
            limit = min(100, max(1, int(request.query.get("limit", "20"))))
        except ValueError:
            return error_response(400, "limit must be an integer")
        after = request.query.get("after")
        with self._lock:
            now = time.monotonic()
            newest_first = list(reversed(self.batches.values()))
            if after is not None:
                ids = [b.id for b in newest_first]
                newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
            page = newest_first[:limit]
            for batch in page:
                self._advance(batch, now)
            data = [b.info() for b in page]
        return _json(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": len(newest_first) > limit,
            }
        )

    # ------------------------------------------------------------------------- lifecycle (lock held)

    def _advance(self, batch: SimBatch, now: float) -> None:
        if batch.status in TERMINAL:
            return
        if batch.status == "cancelling":
            self._finalize(batch, "cancelled")
            return
        if batch.invalid:
            self._finalize(batch, "failed")
            return
        stamp = int(time.time())
        if batch.seconds is None:  # held until finish()
            batch.status = "in_progress"
            batch.times.setdefault("in_progress", stamp)
            return
        elapsed = now - batch.started
        if elapsed >= batch.seconds:
            self._finalize(batch, self.state.config.batch_outcome)
            return
        share = elapsed / batch.seconds
        if share >= 0.1:
            batch.status = "in_progress" if share < 0.9 else "finalizing"
            batch.times.setdefault("in_progress", stamp)
            batch.completed = int(len(batch.requests) * share)
            if batch.status == "finalizing":
                batch.times.setdefault("finalizing", stamp)

    def _finalize(self, batch: SimBatch, outcome: str) -> None:
        stamp = int(time.time())
        if outcome == "failed" or batch.invalid:
            batch.status = "failed"
            batch.completed = batch.failed = 0
            if not batch.invalid:
                batch.invalid = [
                    {"code": "batch_failed", "message": "The batch failed (simulated).", "line": None}
                ]
            batch.times["failed"] = stamp
            return
        n = len(batch.requests)
        run = n if outcome == "completed" else math.floor(n * self.state.config.batch_done_share)
        outputs: list[bytes] = []
        errors: list[bytes] = []
        for custom_id, body in batch.requests[:run]:
            line = self._answer(batch, custom_id, body)
            if line is None:
                continue
            (outputs if line["response"]["status_code"] < 400 else errors).append(orjson.dumps(line))
        if outcome == "expired":
            for custom_id, _ in batch.requests[run:]:
                errors.append(
                    orjson.dumps(self._line(custom_id, None, code="batch_expired", message=_EXPIRED_MESSAGE))
                )
        rng = random.Random(f"{self.state.config.seed}:{batch.id}")
        rng.shuffle(outputs)  # the protocol promises no order
        rng.shuffle(errors)
        batch.completed = len(outputs)
        batch.failed = len(errors)
        batch.output_file_id = self._store_output(batch, "output", outputs)
        batch.error_file_id = self._store_output(batch, "error", errors)
        batch.status = outcome
        if outcome == "cancelled":
            batch.times.setdefault("cancelling", stamp)
        batch.times.setdefault("in_progress", stamp)
        batch.times.setdefault("finalizing", stamp)
        batch.times[outcome] = stamp

    def _line(self, custom_id: str, status: int | None, **fields: Any) -> dict[str, Any]:
        self._n += 1
        return output_line(self._n, custom_id, status, **fields)

    def _store_output(self, batch: SimBatch, kind: str, lines: list[bytes]) -> str | None:
        if not lines:
            return None
        file = SimFile(
            self._id("file-"), f"{batch.id}_{kind}.jsonl", "batch_output", b"\n".join(lines) + b"\n", 0
        )
        file.created_at = int(time.time())
        self.files[file.id] = file
        return file.id

    def _answer(self, batch: SimBatch, custom_id: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """One request's output line, answered like the online endpoint (``None``: left out)."""
        state, cfg = self.state, self.state.config
        stats = self._stats
        try:
            parsed = ParsedRequest(body)
        except BadRequest as exc:
            stats["batch_errors"] += 1
            return self._line(custom_id, 400, body=orjson.loads(error_body(400, str(exc))))
        prompt = parsed.prompt
        if _OMIT in prompt:
            return None
        stats["batch_requests"] += 1
        per_prompt = stats["per_prompt"]
        per_prompt[prompt] = per_prompt.get(prompt, 0) + 1
        markers = parse_markers(prompt) if "[[" in prompt else ()
        marked = [((parsed.model, prompt, parsed.schema is not None), markers)] if markers else []
        fault, code, _, _ = state.draw(cfg, marked)
        if fault in _AS_500:
            fault, code = "status", 500
        if fault in ("status", "error") and code != 200:
            stats["batch_errors"] += 1
            return self._line(custom_id, code, body=orjson.loads(error_body(code)))
        answer = completion(state, parsed, cfg, fault if fault not in (None, "status", "stall") else "ok")
        usage = answer["usage"]
        usage["cost"] = usage["cost"] * cfg.batch_price_factor
        if fault == "empty":
            answer["choices"] = []
        elif fault == "error200":
            answer = {"error": {"code": 502, "message": "Provider returned error (simulated)"}}
        stats["batch_ok"] += 1
        stats["batch_cost"] += usage["cost"]
        batch.usage["input_tokens"] += usage["prompt_tokens"]
        batch.usage["output_tokens"] += usage["completion_tokens"]
        return self._line(custom_id, 200, body=answer)


def _json(data: Any) -> web.Response:
    return web.Response(body=orjson.dumps(data), headers=JSON_HEADERS)
