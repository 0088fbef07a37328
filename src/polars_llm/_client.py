"""Transports: send one chat-completion request, return a :class:`Completion` or raise an APIError.

Two interchangeable HTTP transports speak the same OpenAI wire format and raise the same errors:

* ``aiohttp`` — a lean client (aiohttp + orjson) for the hot path; the default.
* ``openai`` — the official ``openai`` SDK (``AsyncOpenAI`` on its aiohttp transport, ``max_retries=0``
  so its retries never stack on ours).

A third, :class:`WorkerTransport`, wraps a user's ``async def worker(prompt) -> str``.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import orjson

if TYPE_CHECKING:
    import aiohttp

from . import exceptions as exc
from ._config import MapConfig, Worker

__all__ = [
    "Completion",
    "Transport",
    "error_for_status",
    "make_transport",
    "parse_completion",
    "parse_retry_after",
]


@dataclass(frozen=True, slots=True)
class Completion:
    text: str | None
    finish_reason: str | None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost: float | None = None
    tokens_reasoning: int | None = None  # part of tokens_out
    tokens_cached: int | None = None  # part of tokens_in


class Transport(Protocol):
    async def complete(self, prompt: str) -> Completion: ...

    async def aclose(self) -> None: ...


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date).

    >>> parse_retry_after({"retry-after": "2"}), parse_retry_after({"retry-after-ms": "1500"})
    (2.0, 1.5)
    """
    lower = {k.lower(): v for k, v in headers.items()}
    ms = lower.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _error_message(body_text: str | None) -> str:
    if not body_text:
        return "(empty body)"
    try:
        data = orjson.loads(body_text)
    except orjson.JSONDecodeError:
        return body_text[:300]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or err.get("error")
            if msg:
                return str(msg)[:500]
        elif isinstance(err, str):
            return err[:500]
    return body_text[:300]


_FLAGGED = ("moderation", "flagged")


def error_for_status(status: int, headers: Mapping[str, str], body_text: str | None) -> exc.APIError:
    """Map an HTTP error status (or an error code found inside a 200 body) to an exception."""
    headers = {k.lower(): v for k, v in headers.items()}
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
        return exc.InsufficientCreditsError(
            f"{message} — the account is out of credits; add credits at your provider, then re-run",
            **kw,
        )
    if status == 403:
        if any(word in message.lower() for word in _FLAGGED):
            return exc.ContentFilterError(message, **kw)
        return exc.PermissionDeniedError(
            f"{message} — this key may not use this model or endpoint; check the key's permissions", **kw
        )
    if status == 404:
        return exc.NotFoundError(f"{message} — check base_url and the model name", **kw)
    if status == 408:
        return exc.APITimeoutError(message, **kw)
    if status in (409, 425) or status >= 500:
        return exc.ServerError(message, **kw)
    return exc.BadRequestError(message, **kw)


def parse_completion(data: Any, raw: bytes | str | None = None) -> Completion:
    """Turn a decoded 200 body into a Completion; errors hidden inside a 200 are raised as errors."""
    body_text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if not isinstance(data, dict):
        raise exc.MalformedResponseError("response body is not a JSON object", status=200, body=body_text)
    err = data.get("error")
    if err:
        code = err.get("code") if isinstance(err, dict) else None
        status = code if isinstance(code, int) and 400 <= code < 600 else 502
        raise error_for_status(status, {}, body_text)
    choices = data.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise exc.MalformedResponseError("response has no choices", status=200, body=body_text)
    choice = choices[0]
    if isinstance(choice.get("error"), dict):
        raise error_for_status(502, {}, orjson.dumps({"error": choice["error"]}).decode())
    message = choice.get("message") or {}
    text = message.get("content") if isinstance(message, dict) else None
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    cost = usage.get("cost")
    if not (isinstance(cost, int | float) and not isinstance(cost, bool) and 0 <= cost < float("inf")):
        cost = None
    return Completion(
        text=text,
        finish_reason=choice.get("finish_reason"),
        tokens_in=_count(usage.get("prompt_tokens")),
        tokens_out=_count(usage.get("completion_tokens")),
        cost=None if cost is None else float(cost),
        tokens_reasoning=_count(_get(usage, "completion_tokens_details", "reasoning_tokens")),
        tokens_cached=_count(_get(usage, "prompt_tokens_details", "cached_tokens")),
    )


def _get(doc: Mapping[str, Any], *path: str) -> Any:
    for name in path:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(name)  # type: ignore[assignment]
    return doc


def _count(value: Any) -> int | None:
    """A token count as reported: a non-negative integer (also as text), else unknown."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and value >= 0 else None


def decode_completion(raw: bytes) -> Completion:
    """Decode a 200 body (shared by both HTTP transports)."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise exc.MalformedResponseError(
            "response body is not valid JSON", status=200, body=raw.decode("utf-8", "replace")
        ) from None
    return parse_completion(data, raw)


class AiohttpTransport:
    """Lean OpenAI-compatible client: one aiohttp session, orjson, no per-request object churn."""

    def __init__(self, cfg: MapConfig) -> None:
        self._cfg = cfg
        self._body = cfg.request.body
        self._url = cfg.url + "/chat/completions"
        self._headers = {
            "Authorization": f"Bearer {cfg.key}",
            "Content-Type": "application/json",
            "User-Agent": "polars-llm",
        }
        self._session: aiohttp.ClientSession | None = None
        # imported on first use: aiohttp is ~0.25 s of `import polars_llm` otherwise
        import aiohttp

        self._aiohttp = aiohttp

    def _get_session(self) -> aiohttp.ClientSession:
        aiohttp = self._aiohttp
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._cfg.concurrency, limit_per_host=0, ttl_dns_cache=300)
            # aiohttp's own total timeout (one loop timer per request) rather than anyio.fail_after:
            # a cancel scope per request cost ~10 % of throughput at zero latency (see benchmarks/).
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self._cfg.timeout)
            )
        return self._session

    async def complete(self, prompt: str) -> Completion:
        body = orjson.dumps(self._body(prompt))
        session = self._get_session()
        aiohttp = self._aiohttp
        try:
            async with session.post(self._url, data=body, headers=self._headers) as resp:
                status = resp.status
                raw = await resp.read()
                headers = resp.headers
        except TimeoutError:
            raise exc.APITimeoutError(f"no response within {self._cfg.timeout:g} s") from None
        except aiohttp.ClientConnectorError as e:
            raise exc.APIConnectionError(
                f"cannot connect to {self._cfg.url}: {e.os_error}", refused=True
            ) from None
        except aiohttp.ClientPayloadError as e:
            raise exc.MalformedResponseError(f"truncated response body: {e}") from None
        except (aiohttp.ClientError, OSError) as e:
            raise exc.APIConnectionError(f"connection error: {type(e).__name__}: {e}") from None
        if status != 200:
            raise error_for_status(status, dict(headers), raw.decode("utf-8", "replace"))
        return decode_completion(raw)

    async def post(self, path: str, body: bytes) -> bytes:
        """POST a JSON ``body`` to ``{base_url}{path}`` (e.g. ``/embeddings``): the raw 200 body, else the
        mapped :class:`~polars_llm.exceptions.APIError` (the same mapping as :meth:`complete`)."""
        session = self._get_session()
        aiohttp = self._aiohttp
        try:
            async with session.post(self._cfg.url + path, data=body, headers=self._headers) as resp:
                status, raw, headers = resp.status, await resp.read(), resp.headers
        except TimeoutError:
            raise exc.APITimeoutError(f"no response within {self._cfg.timeout:g} s") from None
        except aiohttp.ClientConnectorError as e:
            raise exc.APIConnectionError(
                f"cannot connect to {self._cfg.url}: {e.os_error}", refused=True
            ) from None
        except aiohttp.ClientPayloadError as e:
            raise exc.MalformedResponseError(f"truncated response body: {e}") from None
        except (aiohttp.ClientError, OSError) as e:
            raise exc.APIConnectionError(f"connection error: {type(e).__name__}: {e}") from None
        if status != 200:
            raise error_for_status(status, dict(headers), raw.decode("utf-8", "replace"))
        return raw

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class OpenAITransport:
    """The official ``openai`` SDK (aiohttp transport when available), with its retries turned off."""

    def __init__(self, cfg: MapConfig) -> None:
        import openai

        self._openai = openai
        self._cfg = cfg
        self._body = cfg.request.body
        try:
            http_client = openai.DefaultAioHttpClient()
        except Exception:  # aiohttp extra missing: fall back to the SDK's default httpx2 client
            http_client = None
        self._client = openai.AsyncOpenAI(
            base_url=cfg.url,
            api_key=cfg.key,
            max_retries=0,
            timeout=cfg.timeout,
            http_client=http_client,
        )

    async def complete(self, prompt: str) -> Completion:
        openai = self._openai
        body = self._body(prompt)
        known = {
            k: body.pop(k)
            for k in ("model", "messages", "temperature", "max_tokens", "response_format")
            if k in body
        }
        try:
            with anyio.fail_after(self._cfg.timeout + 1):
                raw = await self._client.chat.completions.with_raw_response.create(
                    **known, extra_body=body or None
                )
        except TimeoutError:
            raise exc.APITimeoutError(f"no response within {self._cfg.timeout:g} s") from None
        except openai.APIStatusError as e:
            raise error_for_status(e.status_code, dict(e.response.headers), e.response.text) from None
        except openai.APITimeoutError:
            raise exc.APITimeoutError(f"no response within {self._cfg.timeout:g} s") from None
        except openai.APIConnectionError as e:
            cause = e.__cause__
            refused = isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower()
            raise exc.APIConnectionError(
                f"cannot connect to {self._cfg.url}: {cause or e}", refused=refused
            ) from None
        return decode_completion(raw.content)

    async def embeddings(self, body: dict[str, Any]) -> bytes:
        """``embeddings.create`` with ``body`` (the SDK's own fields, the rest as ``extra_body``): the raw
        200 body, else the mapped :class:`~polars_llm.exceptions.APIError`."""
        openai = self._openai
        known = {k: body.pop(k) for k in ("model", "input", "dimensions", "encoding_format") if k in body}
        try:
            with anyio.fail_after(self._cfg.timeout + 1):
                raw = await self._client.embeddings.with_raw_response.create(**known, extra_body=body or None)
        except TimeoutError:
            raise exc.APITimeoutError(f"no response within {self._cfg.timeout:g} s") from None
        except openai.APIStatusError as e:
            raise error_for_status(e.status_code, dict(e.response.headers), e.response.text) from None
        except openai.APITimeoutError:
            raise exc.APITimeoutError(f"no response within {self._cfg.timeout:g} s") from None
        except openai.APIConnectionError as e:
            cause = e.__cause__
            refused = isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower()
            raise exc.APIConnectionError(
                f"cannot connect to {self._cfg.url}: {cause or e}", refused=refused
            ) from None
        return raw.content

    async def aclose(self) -> None:
        await self._client.close()


class WorkerTransport:
    """Runs a user's ``async def worker(prompt) -> str`` under the same engine.

    Our own :class:`~polars_llm.exceptions.APIError` subclasses keep their meaning; ``TimeoutError``,
    ``ConnectionError`` and ``OSError`` are treated as transient; any other exception fails that row
    (raise :class:`~polars_llm.exceptions.TransientError` to ask for a retry).
    """

    def __init__(self, worker: Worker, timeout: float) -> None:
        self._worker = worker
        self._timeout = timeout

    async def complete(self, prompt: str) -> Completion:
        try:
            with anyio.fail_after(self._timeout):
                text = await self._worker(prompt)
        except exc.APIError:
            raise
        except TimeoutError:
            raise exc.APITimeoutError(f"worker gave no answer within {self._timeout:g} s") from None
        except (ConnectionError, OSError) as e:
            raise exc.APIConnectionError(f"worker: {type(e).__name__}: {e}") from None
        except Exception as e:
            raise exc.RowError(f"worker raised {type(e).__name__}: {e}") from e
        if text is not None and not isinstance(text, str):
            text = orjson.dumps(text).decode() if isinstance(text, dict | list) else str(text)
        return Completion(text=text, finish_reason="stop")

    async def aclose(self) -> None:
        return None


def make_transport(cfg: MapConfig) -> Transport:
    if cfg.worker is not None:
        return WorkerTransport(cfg.worker, cfg.timeout)
    if cfg.transport == "openai":
        return OpenAITransport(cfg)
    return AiohttpTransport(cfg)
