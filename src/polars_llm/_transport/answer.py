"""One answer: a 200 body read as a :class:`Completion`, and what it means for the row.

:func:`decode_completion` / :func:`parse_completion` read a body (errors hidden inside a 200 are raised as
errors); :func:`interpret` gives the row's result, or the :class:`~polars_llm.APIError` that fails it,
and :func:`error_text` what a failed row stores. Shared by both HTTP transports, the online workers and
batch collection, so an answer means the same whichever way it came.

>>> interpret(Completion(text="ok", finish_reason="stop"), None)
'ok'
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .. import exceptions as exc
from .failures import error_for_status, readable_body
from .limit_headers import Limits, parse_number

__all__ = ["Completion", "decode_completion", "error_text", "interpret", "parse_completion"]


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
            f"response body is not valid JSON: {readable_body(text, 120)!r}", status=200, body=text
        ) from None
    return parse_completion(data, raw, limits)


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
