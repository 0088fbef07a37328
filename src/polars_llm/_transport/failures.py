"""A request's failures as :class:`~polars_llm.APIError` subclasses, the same for every caller.

:func:`error_for_status` maps an error answer (an HTTP status, its headers and body, or an error code
found inside a 200 body) to the exception it means, with the provider's message made readable; the
online transports, embeddings and the batch client all use it. :func:`aiohttp_failures` maps what aiohttp
raises when no answer arrives: no response in time, no connection (``refused``), a body cut short, any
other client or socket error.

>>> type(error_for_status(429, {"retry-after": "2"}, '{"error": {"message": "slow down"}}')).__name__
'RateLimitError'

>>> import aiohttp
>>> try:
...     with aiohttp_failures(aiohttp, base_url="http://127.0.0.1:9", timeout=5.0):
...         raise TimeoutError
... except Exception as e:
...     print(type(e).__name__, e)
APITimeoutError no complete response within 5 s
"""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any, Final

import orjson

from .. import exceptions as exc
from .limit_headers import parse_retry_after

__all__ = ["aiohttp_failures", "error_for_status", "readable_body"]


@contextlib.contextmanager
def aiohttp_failures(aiohttp: ModuleType, *, base_url: str, timeout: float, what: str = "") -> Iterator[None]:
    """Raise aiohttp's failures in the block as ``APIError`` subclasses; ``what`` (e.g. ``"GET <url>: "``)
    starts their messages."""
    try:
        yield
    except TimeoutError:
        raise exc.APITimeoutError(f"{what}no complete response within {timeout:g} s") from None
    except aiohttp.ClientConnectorError as e:
        raise exc.APIConnectionError(f"cannot connect to {base_url}: {e.os_error}", refused=True) from None
    except aiohttp.ClientPayloadError as e:
        raise exc.MalformedResponseError(f"{what}truncated response body: {e}") from None
    except (aiohttp.ClientError, OSError, ValueError) as e:
        raise exc.APIConnectionError(f"{what}connection error: {type(e).__name__}: {e}") from None


_TITLE_RE: Final = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAG_RE: Final = re.compile(r"<[^>]+>")
_SPACE_RE: Final = re.compile(r"\s+")


def readable_body(text: str, limit: int = 300) -> str:
    """A short, readable version of a non-JSON body (an HTML page becomes its title or its text)."""
    if "<" in text and ">" in text:
        title = _TITLE_RE.search(text)
        text = title[1] if title else _TAG_RE.sub(" ", text)
        text = html.unescape(text)
    text = _SPACE_RE.sub(" ", text).strip()
    return text[:limit] or "(empty body)"


def _error_object(body_text: str | None) -> Any:
    if not body_text:
        return None
    try:
        data = orjson.loads(body_text)
    except orjson.JSONDecodeError:
        return None
    return data.get("error", data) if isinstance(data, dict) else None


def _error_message(body_text: str | None) -> str:
    if not body_text:
        return "(empty body)"
    err = _error_object(body_text)
    if isinstance(err, dict):
        msg = err.get("message") or err.get("detail") or err.get("error")
        if msg:
            return str(msg)[:500]
    elif isinstance(err, str) and err:
        return err[:500]
    return readable_body(body_text)


_FLAGGED = ("moderation", "flagged")
_REDIRECTS: Final = frozenset({301, 302, 303, 307, 308})


def _credits_message(message: str, body_text: str | None) -> str:
    """A 402 without Retry-After: the provider's reason (OpenRouter's ``metadata``) and what to do."""
    err = _error_object(body_text)
    meta = err.get("metadata") if isinstance(err, dict) else None
    meta = meta if isinstance(meta, dict) else {}
    source, reason, hint = (
        str(meta[k])[:200] if meta.get(k) else None for k in ("limit_source", "reason", "remedy_hint")
    )
    said = ", ".join(f"{k}: {v}" for k, v in (("limit_source", source), ("reason", reason)) if v)
    text = f"{message} ({said})" if said else message
    if hint:
        text += f" — the provider says: {hint}"
    if reason == "weight_exceeds_budget" or source == "openrouter_credits":
        text += (
            " — one request's reserved cost (its prompt plus max_tokens) is above what the account can "
            "hold: pass a lower max_tokens, shorten the prompt, or add credits"
        )
    elif source == "openrouter_key_limit":
        text += " — this API key's credit limit is used up: raise it or wait for it to reset, then re-run"
    elif source == "openrouter_in_flight_budget":
        text += " — a temporary in-flight budget without a Retry-After: re-run shortly (or lower concurrency)"
    else:
        text += " — the account is out of credits; add credits at your provider, then re-run"
    return text


def error_for_status(status: int, headers: Mapping[str, str], body_text: str | None) -> exc.APIError:
    """Map an HTTP error status (or an error code found inside a 200 body) to an exception."""
    headers = {str(k).lower(): str(v) for k, v in headers.items()}
    retry_after = parse_retry_after(headers)
    message = _error_message(body_text)
    kw: dict[str, Any] = {
        "status": status,
        "headers": headers,
        "body": body_text,
        "retry_after": retry_after,
        "request_id": headers.get("x-request-id"),
    }
    if status == 429:
        return exc.RateLimitError(message, **kw)
    if status == 401:
        return exc.AuthenticationError(
            f"{message} — the API key was rejected; check OPENROUTER_API_KEY (or api_key=) and base_url", **kw
        )
    if status == 402:
        if retry_after is not None:
            return exc.RateLimitError(message, **kw)
        return exc.InsufficientCreditsError(_credits_message(message, body_text), **kw)
    if status == 403:
        if any(word in message.lower() for word in _FLAGGED):
            return exc.ContentFilterError(message, **kw)
        return exc.PermissionDeniedError(
            f"{message} — this key may not use this model or endpoint; check the key's permissions", **kw
        )
    if status == 404:
        return exc.NotFoundError(f"{message} — check base_url and the model name", **kw)
    if status in _REDIRECTS:
        where = headers.get("location") or "(no Location header)"
        return exc.NotFoundError(
            f"the endpoint answered HTTP {status}, a redirect to {where[:200]}; redirects are not followed "
            "(they would turn the POST into a GET) — set base_url to the new address",
            **kw,
        )
    if status == 408:
        return exc.APITimeoutError(message, **kw)
    if status in (409, 425) or status >= 500:
        return exc.ServerError(message, **kw)
    if status == 413:
        return exc.BadRequestError(f"{message} — the request is too large for the provider", **kw)
    return exc.BadRequestError(message, **kw)
