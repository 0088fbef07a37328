"""Exceptions raised by polars_llm.

Every API error carries the facts needed to act on it: HTTP status, response headers, the
server's retry hint, how many attempts were made and the raw body. API keys never appear in
any message or repr.

Hierarchy (statuses are what :func:`polars_llm._transport.failures.error_for_status` maps; a test keeps this
drawing true to it and to what is retried)::

    PolarsLLMError
    ├── ConfigError                 invalid or missing option; raised before any request
    │   └── ColumnTypeError         the prompt column is not a string column (also a TypeError)
    ├── StoreError                  cache file locked by another process, unwritable, foreign
    ├── RowsFailedError             a row operator with on_error="raise" left rows failed or unsent
    └── APIError                    a request to the provider failed
        ├── TransientError          retried with backoff (the row fails only when attempts run out)
        │   ├── RateLimitError          429, or 402 carrying Retry-After
        │   ├── ServerError             409, 425, 500, 502, 503, 504 (a Retry-After is honoured)
        │   ├── APITimeoutError         408, or no answer within ``timeout``
        │   ├── APIConnectionError      refused / reset / DNS (``refused`` says which)
        │   └── MalformedResponseError  bad or empty JSON, HTML, truncated body, no ``choices``
        ├── RowError                this row is ``failed``; the rest of the batch goes on
        │   ├── BadRequestError         400, 413, 422
        │   ├── ContentFilterError      ``finish_reason == "content_filter"``, or a 403 flagged by moderation
        │   ├── RefusalError            the model refused (``message.refusal``); its text is the error
        │   ├── UnusableAnswerError     content that is not text (a number, an object), or a body
        │   │                           above the response-size limit
        │   ├── OutputTruncatedError    ``finish_reason == "length"`` and the output does not validate
        │   ├── InputError              the row's own input cannot be sent (e.g. an unreadable image file);
        │   │                           nothing is sent for it
        │   └── OutputValidationError   output does not match the response model: retried at once
        │                               (3 attempts at most), then the row is failed with the raw text
        └── FatalError              stops the whole run within ~1 s; finished rows are kept
            ├── AuthenticationError     401
            ├── PermissionDeniedError   403
            ├── InsufficientCreditsError 402 without Retry-After (quotes the provider's reason)
            ├── NotFoundError           404: wrong base_url or unknown model; a redirect (301, 302,
            │                           303, 307, 308) is never followed: it would turn the POST into a GET
            ├── ProviderWaitError       the provider asked to wait longer than ``max_wait``; rerun later
            ├── EndpointUnreachableError the endpoint refused connections repeatedly
            ├── BudgetExceededError     ``max_cost`` reached: the rest stays pending (``.frame`` as it stands)
            └── BatchUnsupportedError   mode="batch" on an endpoint without a batch API (OpenRouter, or
                                        batch endpoints not found); raised before anything is uploaded

Example:
    >>> from polars_llm.exceptions import RateLimitError, TransientError
    >>> err = RateLimitError("slow down", status=429, retry_after=2.0)
    >>> isinstance(err, TransientError), err.retry_after
    (True, 2.0)
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Mapping
from typing import Any

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchUnsupportedError",
    "BudgetExceededError",
    "ColumnTypeError",
    "ConfigError",
    "ContentFilterError",
    "EndpointUnreachableError",
    "FatalError",
    "InputError",
    "InsufficientCreditsError",
    "MalformedResponseError",
    "NotFoundError",
    "OutputTruncatedError",
    "OutputValidationError",
    "PermissionDeniedError",
    "PolarsLLMError",
    "ProviderWaitError",
    "RateLimitError",
    "RefusalError",
    "RowError",
    "RowsFailedError",
    "ServerError",
    "StoreError",
    "TransientError",
    "UnusableAnswerError",
]

_BODY_LIMIT = 2000


# Polars raises a *new* exception of the same type when a function inside an expression raises:
# ``type(error)(message + "This error occurred in the following expression…")``, without the facts
# (``status``, ``frame``, …). The errors our entry points raise are remembered here, and an instance
# made from one of their messages alone takes their facts back.
_RAISED: deque[PolarsLLMError] = deque(maxlen=8)


def remember(error: PolarsLLMError) -> PolarsLLMError:
    """Keep ``error``'s facts for the copy Polars makes of it (see above); returns ``error``."""
    _RAISED.append(error)
    return error


def _adopt(error: PolarsLLMError, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if kwargs or len(args) != 1 or not isinstance(args[0], str) or not _RAISED:
        return
    message = args[0]
    for known in reversed(_RAISED):
        said = known.args[0] if known.args else None
        if type(known) is not type(error) or not isinstance(said, str):
            continue
        # Polars' in-memory engine rebuilds from the message, its streaming engine from str(): "HTTP 401: …"
        prefix = next((p for p in (said, str(known)) if message.startswith(p) and message != p), None)
        if prefix is None:
            continue
        message = said + message[len(prefix) :]
        error.__dict__.update({k: v for k, v in known.__dict__.items() if k != "message"})
        error.args = (message,)
        if "message" in known.__dict__:
            error.message = message  # type: ignore[attr-defined]
        return


class PolarsLLMError(Exception):
    """Base class of every error raised by polars_llm."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def __init__(self: PolarsLLMError, *args: Any, **kw: Any) -> None:
            init(self, *args, **kw)
            if type(self).__init__ is __init__:  # the outermost: the subclasses' defaults are set
                _adopt(self, args, kw)

        cls.__init__ = __init__  # type: ignore[misc]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        if type(self).__init__ is PolarsLLMError.__init__:
            _adopt(self, args, {})


class ConfigError(PolarsLLMError, ValueError):
    """An option is missing or invalid. Raised before any request is sent."""


class ColumnTypeError(ConfigError, TypeError):
    """The prompt column has a dtype other than String (or Null)."""


class StoreError(PolarsLLMError):
    """The DuckDB cache file cannot be used (locked, unwritable, foreign or corrupted)."""

    def __init__(self, message: str, *, path: str | None = None, holder: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.holder = holder


class RowsFailedError(PolarsLLMError):
    """A row operator (``classify``, ``filter``, ``extract``) with ``on_error="raise"`` left ``failed``
    rows (or rows not sent); the answers that finished are in the cache, so a rerun pays only for the rest.
    ``failed`` and ``unsent`` count them; ``errors`` holds up to five of the failed rows' errors."""

    def __init__(self, message: str, *, failed: int = 0, unsent: int = 0, errors: tuple[str, ...] = ()):
        super().__init__(message)
        self.message = message
        self.failed = failed
        self.unsent = unsent
        self.errors = errors


class APIError(PolarsLLMError):
    """A request to the provider failed.

    Attributes:
        status: HTTP status code, or ``None`` for transport failures.
        headers: response headers (lower-cased names).
        body: raw response body (truncated to 2000 characters).
        retry_after: seconds the server asked us to wait, if it said.
        attempts: attempts made for this request when the error was final.
        request_id: provider request id, if any.
        kind: short machine-readable kind, stored in the cache's ``error_kind`` column.
    """

    kind = "api_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
        retry_after: float | None = None,
        attempts: int = 1,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.headers = dict(headers or {})
        self.body = body[:_BODY_LIMIT] if body is not None else None
        self.retry_after = retry_after
        self.attempts = attempts
        self.request_id = request_id

    def __str__(self) -> str:
        parts = [self.message]
        if self.status is not None:
            parts.insert(0, f"HTTP {self.status}:")
        if self.attempts > 1:
            parts.append(f"(after {self.attempts} attempts)")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r}, attempts={self.attempts})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.__dict__))


def _rebuild(cls: type[APIError], message: str, state: dict[str, Any]) -> APIError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class TransientError(APIError):
    """Worth retrying after a backoff."""

    kind = "transient"


class RateLimitError(TransientError):
    kind = "rate_limit"


class ServerError(TransientError):
    kind = "server_error"


class APITimeoutError(TransientError):
    kind = "timeout"


class APIConnectionError(TransientError):
    """No answer: the connection was refused, reset or could not be made.

    ``refused`` is true when the endpoint refused the connection outright (nothing listening there);
    refusals that go on stop the run with :class:`EndpointUnreachableError`.
    """

    kind = "connection"

    def __init__(self, message: str, *, refused: bool = False, **facts: Any) -> None:
        super().__init__(message, **facts)
        self.refused = refused


class MalformedResponseError(TransientError):
    kind = "malformed_response"


class RowError(APIError):
    """Only this row fails; every other row goes on."""

    kind = "row_error"


class BadRequestError(RowError):
    kind = "bad_request"


class ContentFilterError(RowError):
    kind = "content_filter"


class RefusalError(RowError):
    """The model declined to answer (OpenAI's ``message.refusal``); the refusal text is the message."""

    kind = "refusal"


class UnusableAnswerError(RowError):
    """The answer cannot be used as text: non-text content, or a body above the response-size limit."""

    kind = "unusable_answer"


class OutputTruncatedError(RowError):
    kind = "output_truncated"


class InputError(RowError):
    """A row's own input cannot be turned into a request (e.g. an image file that cannot be read).

    Nothing is sent for that row; the message names the struct field (``images[0]: …``).
    """

    kind = "input"


class OutputValidationError(RowError):
    """The model's output did not validate against ``response_model``; ``body`` holds the raw text."""

    kind = "output_validation"


class FatalError(APIError):
    """Stops the run: retrying cannot help and every other request would fail the same way."""

    kind = "fatal"


class AuthenticationError(FatalError):
    kind = "authentication"


class PermissionDeniedError(FatalError):
    kind = "permission_denied"


class InsufficientCreditsError(FatalError):
    kind = "insufficient_credits"


class NotFoundError(FatalError):
    kind = "not_found"


class ProviderWaitError(FatalError):
    """The provider asked to wait (``Retry-After`` or a limit's reset) longer than ``max_wait`` allows.

    ``retry_after`` holds the wait asked for (``inf`` when unbounded) and ``hint`` the header as sent.
    Everything finished is saved before this is raised; run the same code again later to resume.
    """

    kind = "provider_wait"

    def __init__(self, message: str, *, hint: str | None = None, max_wait: float | None = None, **facts: Any):
        super().__init__(message, **facts)
        self.hint = hint
        self.max_wait = max_wait


class EndpointUnreachableError(FatalError):
    kind = "endpoint_unreachable"


class BudgetExceededError(FatalError):
    """``max_cost`` would be exceeded by the next request: nothing more is sent.

    Requests in flight finished and are kept; everything finished is in the cache; the other rows stay
    ``pending`` and a rerun with a larger budget continues (paying nothing twice). Attributes: ``spent``
    and ``budget`` (USD, this call's rows, earlier runs included), ``rows_left`` (requests not sent), and
    ``frame``: the output as it stands (finished rows filled in, the rest ``pending``) — the whole frame
    from ``df.llm.map``; the mapped column's rows (prompt, ``result``, ``status``…) from an expression
    (``pl.col(...).llm.map`` in ``with_columns``, eager or lazy); and from a streamed ``lf.llm.map`` a
    LazyFrame of the same query answered from the cache alone (collect or sink it; nothing is sent).
    """

    kind = "budget_exceeded"

    def __init__(
        self, message: str, *, spent: float = 0.0, budget: float = 0.0, rows_left: int = 0, **facts: Any
    ) -> None:
        super().__init__(message, **facts)
        self.spent = spent
        self.budget = budget
        self.rows_left = rows_left
        self.state: Any = None  # the engine's per-key state when it stopped
        self.frame: Any = None  # the output as it stands (set by the entry point)


class BatchUnsupportedError(FatalError):
    """``mode="batch"`` on an endpoint without a batch API we can use; nothing was uploaded.

    ``base_url`` names the endpoint. Raised before any request for OpenRouter, and when the endpoint
    answers "not found" on its batch endpoints (checked before the first upload).
    """

    kind = "batch_unsupported"

    def __init__(self, message: str, *, base_url: str = "", **facts: Any) -> None:
        super().__init__(message, **facts)
        self.base_url = base_url
