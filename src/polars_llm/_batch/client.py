"""A small client for the files and batches endpoints of an OpenAI-compatible provider (aiohttp).

It speaks the published protocol (see ``/v1/files`` and ``/v1/batches`` in OpenAI's API reference) and is
lenient in what it reads: unknown fields are ignored, missing optional ones tolerated. Errors are the
same exceptions as the online path (:func:`~polars_llm._transport.failures.error_for_status`); transient ones
are retried with the online backoff. The API key lives only in the request headers: never in a repr, a log
line or an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import orjson

from .. import exceptions as exc
from .._transport import aiohttp_failures, error_for_status, next_delay

if TYPE_CHECKING:
    import aiohttp

__all__ = ["ENDPOINT", "BatchClient"]

log = logging.getLogger("polars_llm")

ENDPOINT = "/v1/chat/completions"
_REFUSED_ATTEMPTS = 3


class BatchClient:
    """The files and batches endpoints under ``base_url``; use as ``async with BatchClient(...) as c``."""

    def __init__(
        self, base_url: str, api_key: str, *, timeout: float, max_attempts: int = 8, max_backoff: float = 60.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}", "User-Agent": "polars-llm"}
        self._timeout = timeout
        self._max_attempts = max_attempts
        self._max_backoff = max_backoff
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"BatchClient({self.base_url!r})"

    async def __aenter__(self) -> Self:
        import aiohttp

        self._aiohttp = aiohttp
        # no total timeout: a 200 MB upload or download may take long; a silent connection may not
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=self._timeout)
        self._session = aiohttp.ClientSession(timeout=timeout, headers=self._headers)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            with anyio.CancelScope(shield=True):
                await self._session.close()
            self._session = None

    # -- one request ---------------------------------------------------------------------------------------

    async def _send(self, method: str, path: str, **kwargs: Any) -> tuple[int, bytes]:
        """One HTTP exchange: ``(status, body)``; transport failures as :class:`APIError` subclasses."""
        assert self._session is not None, "use `async with BatchClient(...)`"
        aiohttp = self._aiohttp
        url = self.base_url + path
        with aiohttp_failures(
            aiohttp, base_url=self.base_url, timeout=self._timeout, what=f"{method} {url}: "
        ):
            async with self._session.request(method, url, **kwargs) as resp:
                raw = await resp.read()
        if resp.status >= 400:
            raise error_for_status(resp.status, dict(resp.headers), raw.decode("utf-8", "replace"))
        return resp.status, raw

    async def _call(
        self, method: str, path: str, *, form: Callable[[], Any] | None = None, **kwargs: Any
    ) -> bytes:
        """:meth:`_send`, retrying transient errors with backoff (Retry-After honoured). ``form`` makes
        a fresh multipart body for each attempt (aiohttp consumes one per request)."""
        attempts = 0
        while True:
            attempts += 1
            if form is not None:
                kwargs["data"] = form()
            try:
                return (await self._send(method, path, **kwargs))[1]
            except exc.APIError as error:
                error.attempts = attempts
                refused = isinstance(error, exc.APIConnectionError) and error.refused
                if refused and attempts >= _REFUSED_ATTEMPTS:
                    raise exc.EndpointUnreachableError(
                        f"{self.base_url} refused {attempts} connections in a row ({error.message}); "
                        "is the server running and base_url right?",
                        attempts=attempts,
                    ) from None
                delay = next_delay(
                    error, attempts, max_attempts=self._max_attempts, max_backoff=self._max_backoff
                )
                if delay is None:
                    raise
                log.info("%s %s: %s; retrying in %.1f s", method, path, error, delay)
                await anyio.sleep(delay)

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        raw = await self._call(method, path, **kwargs)
        return _decode(raw, f"{method} {path}")

    # -- the protocol ---------------------------------------------------------------------------------------

    async def supports_batches(self) -> bool:
        """Whether the endpoint has a batch API: ``GET /batches`` (and, if that is not found, an empty
        ``POST /batches``, which a batch API refuses as invalid) does not answer "not found"."""
        for method, kwargs in (("GET", {"params": {"limit": "1"}}), ("POST", {"json": {}})):
            try:
                await self._call(method, "/batches", **kwargs)
                return True
            except exc.NotFoundError:
                continue
            except (exc.BadRequestError, exc.ServerError) as error:
                if error.status in (400, 405, 409, 422):  # the route exists; it only disliked the probe
                    return True
                raise
        return False

    async def upload(self, data: bytes, filename: str) -> dict[str, Any]:
        """``POST /files`` (multipart, ``purpose=batch``): the file object (``id``)."""
        aiohttp = self._aiohttp

        def form() -> aiohttp.FormData:  # a FormData is consumed by a request: one per attempt
            fd = aiohttp.FormData()
            fd.add_field("purpose", "batch")
            fd.add_field("file", data, filename=filename, content_type="application/jsonl")
            return fd

        raw = await self._call("POST", "/files", form=form)
        return _object(_decode(raw, "POST /files"), "POST /files")

    async def create_once(self, input_file_id: str, metadata: dict[str, str]) -> dict[str, Any]:
        """One ``POST /batches`` attempt (no retry: a retry could start a second batch on the same file)."""
        body = {
            "input_file_id": input_file_id,
            "endpoint": ENDPOINT,
            "completion_window": "24h",
            "metadata": metadata,
        }
        _, raw = await self._send("POST", "/batches", json=body)
        return _object(_decode(raw, "POST /batches"), "POST /batches")

    async def find_by_input_file(self, input_file_id: str, *, pages: int = 3) -> dict[str, Any] | None:
        """The batch created from ``input_file_id`` among the most recent ones, if any."""
        after: str | None = None
        for _ in range(pages):
            params = {"limit": "100"} | ({"after": after} if after else {})
            page = await self._json("GET", "/batches", params=params)
            items = page.get("data") if isinstance(page, dict) else None
            if not isinstance(items, list) or not items:
                return None
            for item in items:
                if isinstance(item, dict) and item.get("input_file_id") == input_file_id:
                    return item
            if not page.get("has_more"):
                return None
            after = items[-1].get("id") if isinstance(items[-1], dict) else None
        return None

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        """``GET /batches/{id}``: the batch object (its ``status``, ``request_counts``, file ids)."""
        return _object(await self._json("GET", f"/batches/{batch_id}"), f"GET /batches/{batch_id}")

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        """``POST /batches/{id}/cancel``; a batch that has already ended is returned as it is."""
        try:
            return _object(await self._json("POST", f"/batches/{batch_id}/cancel"), "cancel")
        except exc.APIError as error:
            if error.status in (400, 409, 422):  # e.g. "Cannot cancel a batch with status 'completed'"
                return await self.retrieve(batch_id)
            raise

    async def content(self, file_id: str) -> bytes:
        """``GET /files/{id}/content``: the file's bytes (JSON Lines for batch output)."""
        return await self._call("GET", f"/files/{file_id}/content")


def _decode(raw: bytes, what: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise exc.MalformedResponseError(
            f"{what}: the answer is not JSON", status=200, body=raw.decode("utf-8", "replace")
        ) from None


def _object(data: Any, what: str) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise exc.MalformedResponseError(f"{what}: the answer has no id", status=200, body=str(data)[:2000])
    return data
