"""Transports: send one chat-completion request, return a :class:`Completion` or raise an APIError.

Two interchangeable HTTP transports speak the same OpenAI wire format and raise the same errors:

* ``aiohttp`` — a lean client (aiohttp + orjson) for the hot path; the default.
* ``openai`` — the official ``openai`` SDK (``AsyncOpenAI`` on its aiohttp transport, ``max_retries=0``
  so its retries never stack on ours).

A third, :class:`WorkerTransport`, wraps a user's ``async def worker(prompt) -> str``. Reading a 200 body
is :mod:`.answer`'s (:func:`~.answer.decode_completion`); an error answer or a failed connection becomes
an exception in :mod:`.failures`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import anyio
import orjson

if TYPE_CHECKING:
    import aiohttp

from .. import exceptions as exc
from .._config import MapConfig, Worker
from .._request import request_spec
from .answer import Completion, decode_completion
from .failures import aiohttp_failures, error_for_status
from .limit_headers import Limits, parse_limits, parse_number

__all__ = ["MAX_RESPONSE_BYTES", "OpenAITransport", "Transport", "make_transport"]

MAX_RESPONSE_BYTES: Final = 10 * 2**20
"""Answers with a larger body are not read: the row fails with :class:`UnusableAnswerError`."""


class Transport(Protocol):
    async def complete(self, prompt: str) -> Completion: ...

    async def aclose(self) -> None: ...


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
