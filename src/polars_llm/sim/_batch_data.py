"""The simulator's batch objects and files: what the Batch API keeps, and the lines it reads and writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import orjson

__all__ = ["ENDPOINT", "SimBatch", "SimFile", "output_line", "parse_input"]

ENDPOINT: Final = "/v1/chat/completions"


@dataclass
class SimFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def info(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }


@dataclass
class SimBatch:
    id: str
    input_file_id: str
    metadata: Any
    seconds: float | None
    started: float  # monotonic
    created_at: int
    requests: list[tuple[str, dict[str, Any]]]  # (custom_id, body) in input order
    invalid: list[dict[str, Any]] | None  # validation errors: the batch fails
    model: str | None
    status: str = "validating"
    output_file_id: str | None = None
    error_file_id: str | None = None
    completed: int = 0
    failed: int = 0
    times: dict[str, int] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=lambda: {"input_tokens": 0, "output_tokens": 0})

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": "batch",
            "endpoint": ENDPOINT,
            "model": self.model,
            "errors": {"object": "list", "data": self.invalid} if self.invalid else None,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "expires_at": self.created_at + 86_400,
            "request_counts": {
                "total": len(self.requests),
                "completed": self.completed,
                "failed": self.failed,
            },
            "metadata": self.metadata,
            "usage": {**self.usage, "total_tokens": sum(self.usage.values())},
        }
        for name in (
            "in_progress",
            "finalizing",
            "completed",
            "failed",
            "expired",
            "cancelling",
            "cancelled",
        ):
            out[f"{name}_at"] = self.times.get(name)
        return out


def output_line(
    n: int,
    custom_id: str,
    status: int | None,
    code: str | None = None,
    message: str | None = None,
    body: Any = None,
) -> dict[str, Any]:
    """One line of an output or error file (``n`` numbers its ids)."""
    response = None if status is None else {"status_code": status, "request_id": f"req_{n}", "body": body}
    error = None if code is None else {"code": code, "message": message}
    return {"id": f"batch_req_{n}", "custom_id": custom_id, "response": response, "error": error}


def parse_input(
    data: bytes, max_requests: int
) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]] | None, str | None]:
    """The requests of an input file, or the validation errors that fail its batch."""
    requests: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()
    models: set[str] = set()

    def bad(line: int, message: str, code: str = "invalid_request") -> tuple[Any, Any, Any]:
        return [], [{"code": code, "message": message, "line": line, "param": None}], None

    lines = [line for line in data.split(b"\n") if line.strip()]
    if not lines:
        return bad(1, "the input file is empty", "empty_file")
    if len(lines) > max_requests:
        return bad(1, f"{len(lines)} requests; a batch takes at most {max_requests}", "too_many_requests")
    for number, raw in enumerate(lines, 1):
        try:
            item = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return bad(number, "this line is not valid JSON", "invalid_json_line")
        if not isinstance(item, dict):
            return bad(number, "each line must be a JSON object")
        custom_id = item.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return bad(number, "custom_id must be a non-empty string", "missing_custom_id")
        if custom_id in seen:
            return bad(number, f"custom_id {custom_id!r} is used more than once", "duplicate_custom_id")
        if item.get("method") != "POST":
            return bad(number, f"method must be 'POST', got {item.get('method')!r}", "invalid_method")
        if item.get("url") != ENDPOINT:
            return bad(
                number, f"url must be {ENDPOINT!r} like the batch, got {item.get('url')!r}", "mismatched_url"
            )
        body = item.get("body")
        if not isinstance(body, dict):
            return bad(number, "body must be a JSON object", "invalid_body")
        models.add(str(body.get("model")))
        if len(models) > 1:
            return bad(number, "every request of a batch must use the same model", "mismatched_model")
        seen.add(custom_id)
        requests.append((custom_id, body))
    return requests, None, next(iter(models))
