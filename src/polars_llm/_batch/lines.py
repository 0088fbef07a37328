"""Batch files in and out: the JSON Lines requests of an input file, built from the call's
:class:`~polars_llm._request.spec.RequestSpec`, and the provider's output and error lines read back as
outcomes, interpreted exactly as the online path interprets an answer."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import polars as pl

from .. import exceptions as exc
from .._config.options import MapConfig
from .._engine.run import error_text, interpret
from .._store.store import Outcome
from .._transport.client import Completion, error_for_status, parse_completion
from .client import ENDPOINT

__all__ = [
    "BatchFile",
    "batch_errors",
    "batch_files",
    "outcome_of",
    "parse_lines",
    "request_line",
    "row_outcome",
]

log = logging.getLogger("polars_llm")


@dataclass(frozen=True, slots=True)
class BatchFile:
    """One input file of a batch: the keys and prompts of its requests and the JSON Lines bytes."""

    keys: list[str]
    prompts: list[str]
    data: bytes

    def __len__(self) -> int:
        return len(self.keys)


def request_line(key: str, body: dict[str, Any]) -> bytes:
    """One line of a batch input file.

    >>> request_line("k1", {"model": "m"})
    b'{"custom_id":"k1","method":"POST","url":"/v1/chat/completions","body":{"model":"m"}}\\n'
    """
    return orjson.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body}) + b"\n"


def batch_files(
    cfg: MapConfig, keys: pl.Series, prompts: pl.Series, too_big: list[tuple[str, int]]
) -> Iterator[BatchFile]:
    """The requests as input files of at most ``batch_max_requests`` lines and ``batch_max_bytes`` bytes,
    built one at a time. A single request larger than a whole file is left out and added to ``too_big``
    as ``(key, size)``."""
    body = cfg.request.body
    max_n, max_bytes = cfg.batch_max_requests, cfg.batch_max_bytes
    file_keys: list[str] = []
    file_prompts: list[str] = []
    lines: list[bytes] = []
    size = 0
    key_arr, prompt_arr = keys.to_arrow(), prompts.to_arrow()
    for lo in range(0, len(key_arr), 8192):
        chunk = zip(key_arr.slice(lo, 8192).to_pylist(), prompt_arr.slice(lo, 8192).to_pylist(), strict=True)
        for key, prompt in chunk:
            line = request_line(key, body(prompt))
            if len(line) > max_bytes:
                too_big.append((key, len(line)))
                continue
            if lines and (len(lines) >= max_n or size + len(line) > max_bytes):
                yield BatchFile(file_keys, file_prompts, b"".join(lines))
                file_keys, file_prompts, lines, size = [], [], [], 0
            file_keys.append(key)
            file_prompts.append(prompt)
            lines.append(line)
            size += len(line)
    if lines:
        yield BatchFile(file_keys, file_prompts, b"".join(lines))


# -- reading the provider's output ---------------------------------------------------------------------------


def parse_lines(raw: bytes, what: str) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON Lines file; lines that are not JSON objects are skipped (and logged)."""
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError:
            log.warning("%s: line %d is not JSON; skipped", what, number)
            continue
        if isinstance(item, dict):
            yield item


def _decoded(body: Any) -> Any:
    if isinstance(body, bytes | str):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            return body
    return body


def row_outcome(key: str, status: str, **fields: Any) -> Outcome:
    return Outcome(key=key, status=status, attempts=1, finished_at=time.time(), **fields)


def _failed(key: str, error: exc.APIError, **usage: Any) -> Outcome:
    return row_outcome(key, "failed", error=error_text(error), error_kind=error.kind, **usage)


def outcome_of(
    key: str,
    line: dict[str, Any],
    validate: Callable[[str | None], str] | None,
    cost_of: Callable[[Completion], float | None] | None = None,
) -> Outcome | None:
    """One output or error line as the row's outcome, interpreted as the online path would; ``None`` when
    the request was not run (``batch_expired``) and must be sent again.

    >>> body = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
    ...         "usage": {"prompt_tokens": 3, "completion_tokens": 1, "cost": 0.5}}
    >>> o = outcome_of("k", {"custom_id": "k", "response": {"status_code": 200, "body": body}}, None)
    >>> o.status, o.result, o.tokens_in, o.cost
    ('done', 'hi', 3, 0.5)
    >>> outcome_of("k", {"response": {"status_code": 400, "body": {"error": {"message": "bad"}}}},
    ...            None).error
    'HTTP 400: bad'
    >>> outcome_of("k", {"response": None, "error": {"code": "batch_expired", "message": "late"}}, None)
    """
    response, error = line.get("response"), line.get("error")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        code = response["status_code"]
        body = _decoded(response.get("body"))
        raw = body if isinstance(body, str) else orjson.dumps(body).decode()
        if not 200 <= code < 300:
            return _failed(key, error_for_status(code, {}, raw))
        try:
            completion = parse_completion(body, raw)
        except exc.APIError as e:
            return _failed(key, e)
        usage = {
            "tokens_in": completion.tokens_in,
            "tokens_out": completion.tokens_out,
            "cost": completion.cost if cost_of is None else cost_of(completion),
        }
        try:
            result = interpret(completion, validate)
        except exc.APIError as e:
            return _failed(key, e, **usage)
        return row_outcome(key, "done", result=result, **usage)
    if isinstance(error, dict | str):
        code = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        if code == "batch_expired":
            return None
        text = f"{code}: {message}" if code else str(message)
        return row_outcome(
            key, "failed", error=f"the batch reported: {text}", error_kind=str(code or "batch_error")
        )
    return row_outcome(
        key, "failed", error="the batch output line has neither a response nor an error",
        error_kind="malformed_response",
    )  # fmt: skip


def batch_errors(info: dict[str, Any]) -> str:
    errors = info.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else errors
    if not isinstance(data, list) or not data:
        return ""
    texts = []
    for item in data[:3]:
        if isinstance(item, dict):
            where = f" (line {item['line']})" if item.get("line") else ""
            texts.append(f"{item.get('code') or 'error'}: {item.get('message') or ''}{where}")
    return "; ".join(texts)
