"""Transports: send one chat-completion request, return a :class:`Completion` or raise an APIError.

Two interchangeable HTTP transports speak the same OpenAI wire format and raise the same errors:

* ``aiohttp`` — a lean client (aiohttp + orjson) for the hot path; the default.
* ``openai`` — the official ``openai`` SDK (``AsyncOpenAI`` on its aiohttp transport, ``max_retries=0``
  so its retries never stack on ours).

A third, :class:`WorkerTransport`, wraps a user's ``async def worker(prompt) -> str``.
"""

from __future__ import annotations

import contextlib
import html
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import orjson

if TYPE_CHECKING:
    import aiohttp

from .. import exceptions as exc
from .._config import MapConfig, Worker
from .._request import request_spec
from .failures import aiohttp_failures
from .limit_headers import Limits, parse_limits, parse_number, parse_retry_after

__all__ = [
    "MAX_RESPONSE_BYTES",
    "Completion",
    "OpenAITransport",
    "Transport",
    "error_for_status",
    "make_transport",
    "parse_completion",
    "parse_retry_after",
]

MAX_RESPONSE_BYTES: Final = 10 * 2**20
"""Answers with a larger body are not read: the row fails with :class:`UnusableAnswerError`."""


@dataclass(frozen=True, slots=True)
class Completion:
    """One answer: its text (``None`` if it had none), why it stopped, usage, and what it announced.

    ``refusal`` is the model's refusal text, ``unusable`` says why content that was there is not text,
    ``limits`` the rate-limit budgets announced in the response's headers.
    """

    text: str | None
    finish_reason: str | None
    tokens_in: int | None = None
    tokens_out: int | None = None
    cost: float | None = None
    tokens_reasoning: int | None = None  # part of tokens_out
    tokens_cached: int | None = None  # part of tokens_in
    refusal: str | None = None
    unusable: str | None = None
    limits: Limits | None = None


class Transport(Protocol):
    async def complete(self, prompt: str) -> Completion: ...

    async def aclose(self) -> None: ...


_TITLE_RE: Final = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_TAG_RE: Final = re.compile(r"<[^>]+>")
_SPACE_RE: Final = re.compile(r"\s+")


def _readable(text: str, limit: int = 300) -> str:
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
    return _readable(body_text)


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


def _count(value: Any) -> int | None:
    """A token count: a non-negative number (or a numeric string), else ``None``."""
    number = parse_number(value)
    return int(number) if number is not None else None


def _text_of(content: Any) -> tuple[str | None, str | None]:
    """``(text, why not)`` of a message's ``content``: a string, or the text parts of a list of parts."""
    if content is None or isinstance(content, str):
        return content, None
    if isinstance(content, list):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        if texts:
            return "".join(texts), None
        kinds = sorted({str(p.get("type")) if isinstance(p, dict) else type(p).__name__ for p in content})
        return None, f"the answer's content is a list without text parts ({', '.join(kinds) or 'empty'})"
    shown = orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS, default=str).decode()[:200]
    return None, f"the answer's content is {type(content).__name__} {shown}, not text"


def _error_status(code: Any) -> int:
    number = parse_number(code)
    return int(number) if number is not None and 400 <= number < 600 else 502


def parse_completion(data: Any, raw: bytes | str | None = None, limits: Limits | None = None) -> Completion:
    """Turn a decoded 200 body into a Completion; errors hidden inside a 200 are raised as errors.

    Whatever the body holds, the outcome is a Completion or an :class:`~polars_llm.exceptions.APIError`.
    """
    body_text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    if not isinstance(data, dict):
        raise exc.MalformedResponseError("response body is not a JSON object", status=200, body=body_text)
    err = data.get("error")
    if err:
        code = err.get("code") if isinstance(err, dict) else None
        raise error_for_status(_error_status(code), {}, body_text)
    choices = data.get("choices")
    if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise exc.MalformedResponseError("response has no choices", status=200, body=body_text)
    choice = choices[0]
    if isinstance(choice.get("error"), dict):
        code = choice["error"].get("code")
        raise error_for_status(_error_status(code), {}, orjson.dumps({"error": choice["error"]}).decode())
    message = choice.get("message")
    if not isinstance(message, dict):
        raise exc.MalformedResponseError("the answer has no message", status=200, body=body_text)
    text, unusable = _text_of(message.get("content"))
    refusal = message.get("refusal")
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    finish = choice.get("finish_reason")
    return Completion(
        text=text,
        finish_reason=finish if isinstance(finish, str) else None,
        tokens_in=_count(usage.get("prompt_tokens")),
        tokens_out=_count(usage.get("completion_tokens")),
        cost=parse_number(usage.get("cost")),
        tokens_reasoning=_count(_get(usage, "completion_tokens_details", "reasoning_tokens")),
        tokens_cached=_count(_get(usage, "prompt_tokens_details", "cached_tokens")),
        refusal=refusal if isinstance(refusal, str) and refusal.strip() else None,
        unusable=unusable,
        limits=limits,
    )


def _get(doc: Mapping[str, Any], *path: str) -> Any:
    for name in path:
        if not isinstance(doc, Mapping):
            return None
        doc = doc.get(name)  # type: ignore[assignment]
    return doc


def decode_completion(raw: bytes, limits: Limits | None = None) -> Completion:
    """Decode a 200 body (shared by both HTTP transports)."""
    if not raw.strip():
        raise exc.MalformedResponseError("the provider answered 200 with an empty body", status=200, body="")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        text = raw.decode("utf-8", "replace")
        raise exc.MalformedResponseError(
            f"response body is not valid JSON: {_readable(text, 120)!r}", status=200, body=text
        ) from None
    return parse_completion(data, raw, limits)


def _too_large(size: int | None) -> exc.UnusableAnswerError:
    said = f"{size:,} bytes" if size is not None else "more"
    return exc.UnusableAnswerError(
        f"the response body ({said}) is above the {MAX_RESPONSE_BYTES // 2**20} MiB response-size limit; "
        "it was not read",
        status=200,
    )


def _limits_of(headers: Mapping[str, str]) -> Limits | None:
    for name in headers:
        if "ratelimit" in name.lower():
            return parse_limits(headers)
    return None


class AiohttpTransport:
    """Lean OpenAI-compatible client: one aiohttp session, orjson, no per-request object churn."""

    def __init__(self, cfg: MapConfig) -> None:
        self._cfg = cfg
        self._body = request_spec(cfg).body
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
            # aiohttp's own total timeout (one loop timer per request, also over reading the body) rather
            # than anyio.fail_after: a cancel scope per request cost ~10 % of throughput at zero latency.
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=self._cfg.timeout)
            )
        return self._session

    async def _read(self, resp: Any) -> bytes:
        size = resp.content_length
        if size is not None and size > MAX_RESPONSE_BYTES:
            raise _too_large(size)
        if size is not None:
            return await resp.read()
        chunks, total = [], 0
        async for chunk in resp.content.iter_chunked(2**16):
            total += len(chunk)
            if total > MAX_RESPONSE_BYTES:
                raise _too_large(None)
            chunks.append(chunk)
        return b"".join(chunks)

    async def complete(self, prompt: str) -> Completion:
        headers, raw = await self._exchange(self._url, orjson.dumps(self._body(prompt)), limited=True)
        return decode_completion(raw, _limits_of(headers))

    async def post(self, path: str, body: bytes) -> bytes:
        """POST a JSON ``body`` to ``{base_url}{path}`` (e.g. ``/embeddings``): the raw 200 body, else the
        mapped :class:`~polars_llm.exceptions.APIError` (the same mapping as :meth:`complete`; no size
        limit: a batch of embeddings is megabytes)."""
        return (await self._exchange(self._cfg.url + path, body, limited=False))[1]

    async def _exchange(self, url: str, body: bytes, *, limited: bool) -> tuple[Any, bytes]:
        """POST ``body``: the 200 answer's ``(headers, raw body)``, else the mapped error. Redirects are never
        followed (they would turn the POST into a GET); ``limited``: a 200 body above the response-size
        limit is not read."""
        session = self._get_session()
        aiohttp = self._aiohttp
        with aiohttp_failures(aiohttp, base_url=self._cfg.url, timeout=self._cfg.timeout):
            async with session.post(url, data=body, headers=self._headers, allow_redirects=False) as resp:
                status = resp.status
                headers = resp.headers
                raw = await self._read(resp) if limited and status == 200 else await resp.read()
        if status != 200:
            raise error_for_status(status, dict(headers), raw[:MAX_RESPONSE_BYTES].decode("utf-8", "replace"))
        return headers, raw

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _cut_short(error: BaseException) -> bool:
    """The body ended before its announced length (aiohttp or httpx wording, possibly as a cause)."""
    seen: BaseException | None = error
    for _ in range(4):
        if seen is None:
            return False
        name = type(seen).__name__
        text = str(seen).lower()
        if "payload" in name.lower() or "contentlength" in name.lower() or "not completed" in text:
            return True
        if "content length" in text or "incomplete" in text or "peer closed" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class OpenAITransport:
    """The official ``openai`` SDK (aiohttp transport when available), with its retries turned off."""

    def __init__(self, cfg: MapConfig) -> None:
        try:
            import openai
        except ImportError:
            raise exc.ConfigError(
                "transport='openai' needs the official SDK, an optional extra: "
                "pip install 'polars-llm-map[openai]' (or leave the default transport='aiohttp')"
            ) from None

        self._openai = openai
        self._cfg = cfg
        self._body = request_spec(cfg).body
        try:  # redirects are not followed (the SDK's clients would, turning a POST into a GET)
            http_client = openai.DefaultAioHttpClient(follow_redirects=False)
        except Exception:  # aiohttp extra missing: fall back to the SDK's default httpx2 client
            http_client = openai.DefaultAsyncHttpxClient(follow_redirects=False)
        self._client = openai.AsyncOpenAI(
            base_url=cfg.url,
            api_key=cfg.key,
            max_retries=0,
            timeout=cfg.timeout,
            http_client=http_client,
        )

    async def _call(self, known: dict[str, Any], extra: dict[str, Any] | None) -> tuple[int, Any, bytes]:
        stream = self._client.chat.completions.with_streaming_response.create(**known, extra_body=extra)
        async with stream as resp:
            headers = resp.headers
            size = parse_number(headers.get("content-length"))
            if size is not None and size > MAX_RESPONSE_BYTES:
                raise _too_large(int(size))
            chunks, total = [], 0
            async for chunk in resp.iter_bytes():
                total += len(chunk)
                if total > MAX_RESPONSE_BYTES:
                    raise _too_large(None)
                chunks.append(chunk)
            return resp.status_code, headers, b"".join(chunks)

    @contextlib.contextmanager
    def _sdk_errors(self) -> Iterator[None]:
        """The SDK's (and its HTTP layer's) errors as ours: the same mapping for chat and embeddings."""
        openai = self._openai
        try:
            yield
        except TimeoutError:
            raise exc.APITimeoutError(f"no complete response within {self._cfg.timeout:g} s") from None
        except openai.APIStatusError as e:
            raise error_for_status(e.status_code, dict(e.response.headers), e.response.text) from None
        except openai.APITimeoutError:
            raise exc.APITimeoutError(f"no complete response within {self._cfg.timeout:g} s") from None
        except openai.APIConnectionError as e:
            cause = e.__cause__
            if _cut_short(e):
                raise exc.MalformedResponseError(f"truncated response body: {cause or e}") from None
            refused = isinstance(cause, ConnectionRefusedError) or "refused" in str(cause).lower()
            raise exc.APIConnectionError(
                f"cannot connect to {self._cfg.url}: {cause or e}", refused=refused
            ) from None
        except exc.APIError:
            raise
        except Exception as e:  # the SDK or its HTTP layer let something of its own through
            if _cut_short(e):
                raise exc.MalformedResponseError(
                    f"truncated response body: {type(e).__name__}: {e}"
                ) from None
            raise exc.APIConnectionError(f"connection error: {type(e).__name__}: {e}") from None

    async def complete(self, prompt: str) -> Completion:
        body = self._body(prompt)
        known = {
            k: body.pop(k)
            for k in ("model", "messages", "temperature", "max_tokens", "response_format")
            if k in body
        }
        with self._sdk_errors(), anyio.fail_after(self._cfg.timeout + 1):
            status, headers, raw = await self._call(known, body or None)
        if status != 200:
            raise error_for_status(status, dict(headers), raw.decode("utf-8", "replace"))
        return decode_completion(raw, _limits_of(headers))

    async def embeddings(self, body: dict[str, Any]) -> bytes:
        """``embeddings.create`` with ``body`` (the SDK's own fields, the rest as ``extra_body``): the raw
        200 body, else the mapped :class:`~polars_llm.exceptions.APIError`."""
        known = {k: body.pop(k) for k in ("model", "input", "dimensions", "encoding_format") if k in body}
        with self._sdk_errors(), anyio.fail_after(self._cfg.timeout + 1):
            raw = await self._client.embeddings.with_raw_response.create(**known, extra_body=body or None)
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
