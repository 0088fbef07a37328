"""What one answer means: the row's result, or the :class:`~polars_llm.APIError` that fails it.

Shared by the online workers and batch collection (:func:`interpret`, :func:`error_text`), so an answer
means the same whichever way it came.

>>> from polars_llm._transport.client import Completion
>>> interpret(Completion(text="ok", finish_reason="stop"), None)
'ok'
"""

from __future__ import annotations

from collections.abc import Callable

from .. import exceptions as exc
from .client import Completion

__all__ = ["error_text", "interpret"]


def interpret(completion: Completion, validate: Callable[[str | None], str] | None) -> str:
    """The row's result from one answer, or the :class:`~polars_llm.APIError` that fails it.

    Shared by the online workers and batch collection, so an answer means the same whichever way it came:
    refusal, content filter, content that is not text, structured output cut at ``max_tokens`` (complete
    JSON still counts), ``response_model`` validation, missing text.
    """
    if completion.refusal is not None:
        raise exc.RefusalError(f"the model refused: {completion.refusal[:1000]}", body=completion.refusal)
    if completion.finish_reason == "content_filter":
        raise exc.ContentFilterError(
            "the provider's content filter stopped this answer", body=completion.text
        )
    if completion.unusable is not None:
        raise exc.UnusableAnswerError(completion.unusable)
    if validate is not None:
        if completion.finish_reason == "length":  # cut at max_tokens, but the JSON may be whole
            try:
                return validate(completion.text)
            except exc.OutputValidationError:
                raise exc.OutputTruncatedError(
                    "output cut at max_tokens before the JSON was complete; raise max_tokens",
                    body=completion.text,
                ) from None
        return validate(completion.text)
    if completion.text is None:
        raise exc.MalformedResponseError("the answer has no text content")
    return completion.text


def error_text(error: exc.APIError) -> str:
    """The ``error`` stored for a failed row (validation failures keep the raw output)."""
    message = str(error)
    if error.body and isinstance(error, exc.OutputValidationError | exc.OutputTruncatedError):
        message = f"{message}\nraw output: {error.body}"
    return message
