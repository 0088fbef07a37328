"""The wire format of the simulator: request parsing, fault markers and OpenAI-style error bodies."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Final, TypeVar

import orjson
from aiohttp import web

from ._outputs import expected_json, expected_text

if TYPE_CHECKING:
    from ._options import SimConfig

__all__ = [
    "HOSTILE_MARKERS",
    "JSON_HEADERS",
    "VALUE_MARKERS",
    "BadRequest",
    "Marker",
    "ParsedEmbeddings",
    "ParsedRequest",
    "error_response",
    "fault_error",
    "parse_markers",
    "receive",
    "refused",
    "retry_headers",
    "wrong_key",
]

HOSTILE_MARKERS: Final = frozenset(
    {
        "content_parts",
        "content_number",
        "content_object",
        "content_image",
        "usage_string",
        "usage_negative",
        "refusal",
        "length_valid",
        "html",
        "empty_body",
        "choices_null",
        "message_null",
        "short_body",
        "stall_body",
        "huge",
        "huge_chunked",
        "credits_wait",
    }
)
"""Markers of hostile answers without a value (see the package docstring); sent by :mod:`._hostile`."""
_MARKER_RE: Final = re.compile(r"\[\[([A-Za-z_0-9]+)(?::([^\[\]]*))?\]\]")
_SIMPLE_MARKERS: Final = (
    frozenset(
        {
            "content_filter",
            "length",
            "bad_json",
            "wrong_schema",
            "malformed",
            "truncated",
            "error200",
            "empty",
            "stall",
            "reset",
        }
    )
    | HOSTILE_MARKERS
)
# markers whose first argument is a value (a header's text, a status, a limit source), then ``:N``
VALUE_MARKERS: Final = {
    "retry_after": 429,
    "retry_after_ms": 429,
    "credits": 402,
    "redirect": 0,
    "html_error": 0,
}
JSON_HEADERS: Final = {"Content-Type": "application/json"}
_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_credits",
    403: "permission_denied",
    404: "not_found_error",
    408: "timeout",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_exceeded",
}
_ERROR_MESSAGES: Final = {
    401: "Invalid API key (simulated)",
    402: "Insufficient credits",
    403: "Forbidden: key limit exceeded (simulated)",
    429: "Rate limit exceeded (simulated)",
    500: "Internal server error (simulated)",
    502: "Bad gateway: upstream provider error (simulated)",
    503: "Service unavailable: overloaded (simulated)",
}

_IMAGE_CHARS: Final = 340  # an image part counts as ~85 prompt tokens (a low-detail image)

# A marker, normalised: (kind, status code or 0, first-N-attempts or None, extra delay seconds, value).
Marker = tuple[str, int, int | None, float, str]


@lru_cache(maxsize=4096)
def parse_markers(prompt: str) -> tuple[Marker, ...]:
    """The fault markers in ``prompt`` (unknown or malformed markers are ignored).

    >>> for marker in parse_markers("x [[flaky:500:2]] [[length]] [[flaky429]] [[delay:0.5]] [[nope]]"):
    ...     print(marker)
    ('status', 500, 2, 0.0, '')
    ('length', 0, None, 0.0, '')
    ('status', 429, 1, 0.0, '')
    ('delay', 0, None, 0.5, '')
    >>> parse_markers("[[retry_after:soon]] [[redirect:301:2]]")
    (('retry_after', 429, 1, 0.0, 'soon'), ('redirect', 301, 2, 0.0, '301'))
    """
    out: list[Marker] = []
    for name, arg_text in _MARKER_RE.findall(prompt):
        args = arg_text.split(":") if arg_text else []
        try:
            if name == "status" and args:
                out.append(("status", _status(args[0]), int(args[1]) if len(args) > 1 else None, 0.0, ""))
            elif name == "flaky":
                code = _status(args[0]) if args else 500
                out.append(("status", code, int(args[1]) if len(args) > 1 else 1, 0.0, ""))
            elif name == "flaky429":
                out.append(("status", 429, int(args[0]) if args else 1, 0.0, ""))
            elif name == "delay" and args:
                out.append(("delay", 0, None, max(float(args[0]), 0.0), ""))
            elif name in VALUE_MARKERS:
                value = args[0] if args else ""
                code = VALUE_MARKERS[name] or _status(value or ("302" if name == "redirect" else "502"))
                first_n = int(args[1]) if len(args) > 1 else (1 if name.startswith("retry") else None)
                out.append((name, code, first_n, 0.0, value))
            elif name in _SIMPLE_MARKERS:
                out.append((name, 0, int(args[0]) if args else None, 0.0, ""))
        except ValueError:
            continue
    return tuple(out)


def _status(text: str) -> int:
    code = int(text)
    if not 200 <= code <= 599:
        raise ValueError(code)
    return code


def error_body(status: int, message: str | None = None) -> bytes:
    return orjson.dumps(
        {
            "error": {
                "message": message or _ERROR_MESSAGES.get(status, f"HTTP {status} (simulated)"),
                "type": _ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error"),
                "param": None,
                "code": status,
            }
        }
    )


def error_response(
    status: int, message: str | None = None, headers: Mapping[str, str] | None = None
) -> web.Response:
    all_headers = dict(JSON_HEADERS)
    if headers:
        all_headers.update(headers)
    return web.Response(status=status, body=error_body(status, message), headers=all_headers)


def retry_headers(wait: float) -> dict[str, str]:
    return {
        "Retry-After": str(max(1, math.ceil(wait - 1e-9))),
        "retry-after-ms": str(max(1, math.ceil(wait * 1000 - 1e-6))),
    }


def wrong_key(request: web.Request, cfg: SimConfig) -> bool:
    """Whether the server wants a key (``api_key``) and the request does not bear it."""
    return cfg.api_key is not None and request.headers.get("Authorization") != f"Bearer {cfg.api_key}"


def refused(request: web.Request, cfg: SimConfig) -> web.Response | None:
    """What every API endpoint answers before reading a request: 401 for a wrong key, else the
    ``fail_mode`` status; ``None`` to go on."""
    if wrong_key(request, cfg):
        return error_response(401)
    if cfg.fail_mode is not None:
        return error_response(cfg.fail_mode)
    return None


def fault_error(code: int, name: str, cfg: SimConfig) -> web.Response:
    """A simulated error answer (fault ``name``): a 429 asks for 1 s, a 503 for ``error_retry_after``."""
    headers = {"X-Sim-Fault": name}
    if code == 429:
        headers.update(retry_headers(1.0))
    elif code == 503 and cfg.error_retry_after is not None:
        headers.update(retry_headers(cfg.error_retry_after))
    return error_response(code, headers=headers)


T = TypeVar("T")


async def receive(
    request: web.Request, cfg: SimConfig, parse: Callable[[Any], T], record: Callable[[str, Any], None]
) -> T | web.Response:
    """A request's parsed body (``parse`` of its JSON, ``record``-ed first), or the error answer to send:
    :func:`refused`'s, or a 400 for a body that is not JSON or not a valid request."""
    no = refused(request, cfg)
    if no is not None:
        return no
    try:
        body = orjson.loads(await request.read())
        record(request.path, body)
        return parse(body)
    except orjson.JSONDecodeError:
        return error_response(400, "request body is not valid JSON")
    except BadRequest as exc:
        return error_response(400, str(exc))


class BadRequest(Exception):
    pass


class ParsedRequest:
    __slots__ = ("max_tokens", "model", "prompt", "prompt_tokens", "schema", "system", "text_mode")

    def __init__(self, body: object) -> None:
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("'model' is required")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list")
        prompt: str | None = None
        system: list[str] = []
        total = 0
        for message in messages:
            if not isinstance(message, dict):
                raise BadRequest("each message must be an object")
            content = message.get("content")
            text, images = (content, 0) if isinstance(content, str) else _text_of(content)
            total += len(text) + _IMAGE_CHARS * images
            role = message.get("role")
            if role == "user":
                prompt = text
            elif role in ("system", "developer"):
                system.append(text)
        if prompt is None:
            raise BadRequest("'messages' must contain a user message")
        self.model: str = model
        self.prompt: str = prompt
        self.system: str | None = "\n".join(system) if system else None
        self.prompt_tokens = max(1, total // 4)
        self.schema: dict[str, Any] | None = None
        self.text_mode = "text"
        fmt = body.get("response_format")
        if fmt is not None:
            kind = fmt.get("type") if isinstance(fmt, dict) else None
            if kind == "json_schema":
                spec = fmt.get("json_schema")
                schema = spec.get("schema") if isinstance(spec, dict) else None
                if not isinstance(schema, dict):
                    raise BadRequest("response_format.json_schema.schema must be an object")
                self.schema = schema
                self.text_mode = "json_schema"
            elif kind == "json_object":
                self.text_mode = "json_object"
            elif kind != "text":
                raise BadRequest(f"unsupported response_format type {kind!r}")
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        self.max_tokens: int | None = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else None

    def content(self) -> str:
        if self.text_mode == "json_schema":
            assert self.schema is not None
            return orjson.dumps(expected_json(self.schema, self.model, self.prompt, self.system)).decode()
        text = expected_text(self.model, self.prompt, self.system)
        if self.text_mode == "json_object":
            return orjson.dumps({"model": self.model, "answer": text}).decode()
        return text


def _text_of(content: object) -> tuple[str, int]:
    """The text of a message's content and its number of image parts (checked like OpenAI does)."""
    if content is None:
        return "", 0
    if not isinstance(content, list):
        raise BadRequest("message content must be a string or a list of parts")
    texts: list[str] = []
    images = 0
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else None
            if not isinstance(url, str) or not (
                url.startswith(("http://", "https://"))
                or (url.startswith("data:image/") and ";base64," in url)
            ):
                raise BadRequest("image_url.url must be an http(s) URL or a data:image/...;base64, URL")
            images += 1
        else:
            raise BadRequest(f"unsupported content part type {kind!r}")
    return "".join(texts), images


MAX_EMBEDDING_INPUTS: Final = 2048
MAX_DIMENSIONS: Final = 8192


class ParsedEmbeddings:
    """A ``POST /embeddings`` body: ``model``, ``input`` (a string or up to 2048 strings), optional
    ``dimensions`` and ``encoding_format`` (``float`` or ``base64``)."""

    __slots__ = ("dimensions", "encoding", "inputs", "model", "prompt_tokens")

    def __init__(self, body: object, default_dimensions: int) -> None:
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("'model' is required")
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw
        if not isinstance(inputs, list) or not inputs or not all(isinstance(t, str) for t in inputs):
            raise BadRequest("'input' must be a string or a non-empty list of strings")
        if len(inputs) > MAX_EMBEDDING_INPUTS:
            raise BadRequest(f"'input' may hold at most {MAX_EMBEDDING_INPUTS} strings, got {len(inputs)}")
        if any(not t for t in inputs):
            raise BadRequest("'input' strings must not be empty")
        dimensions = body.get("dimensions", default_dimensions)
        if (
            not isinstance(dimensions, int)
            or isinstance(dimensions, bool)
            or not 1 <= dimensions <= MAX_DIMENSIONS
        ):
            raise BadRequest(f"'dimensions' must be an integer between 1 and {MAX_DIMENSIONS}")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise BadRequest("'encoding_format' must be 'float' or 'base64'")
        self.model: str = model
        self.inputs: list[str] = inputs
        self.dimensions: int = dimensions
        self.encoding: str = encoding
        self.prompt_tokens = sum(max(1, len(t) // 4) for t in inputs)
