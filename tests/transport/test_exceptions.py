"""The hierarchy drawn in ``exceptions.py``'s docstring is the code's: parents, statuses, what is retried."""

from __future__ import annotations

import re

import pytest

import polars_llm
from polars_llm import exceptions as exc
from polars_llm._transport import error_for_status
from polars_llm._transport.retry import is_retryable, next_delay


def drawing() -> dict[str, tuple[str | None, str]]:
    """``{class name: (parent name, description)}`` parsed from the docstring's tree."""
    doc = exc.__doc__ or ""
    tree = doc.split("::", 1)[1].split("Example:", 1)[0]
    out: dict[str, tuple[str | None, str]] = {}
    stack: list[tuple[int, str]] = []
    last = None
    for raw in tree.splitlines():
        if not raw.strip():
            continue
        match = re.search(r"[├└]── ([A-Z][A-Za-z]+)\s*(.*)$", raw)
        if match is None:
            if raw.strip() == "PolarsLLMError":
                stack, last = [(0, "PolarsLLMError")], "PolarsLLMError"
                out["PolarsLLMError"] = (None, "")
            elif last is not None:  # a description's continuation line
                parent, text = out[last]
                out[last] = (parent, f"{text} {raw.strip(' │')}")
            continue
        depth = match.start(1)
        while stack and stack[-1][0] >= depth:
            stack.pop()
        name, text = match[1], match[2]
        out[name] = (stack[-1][1] if stack else None, text)
        stack.append((depth, name))
        last = name
    return out


def test_every_drawn_class_exists_under_the_drawn_parent() -> None:
    tree = drawing()
    assert len(tree) >= 20
    for name, (parent, _) in tree.items():
        cls = getattr(exc, name)
        if parent is not None:
            assert cls.__bases__[0] is getattr(exc, parent), f"{name} is drawn under {parent}"
    drawn = set(tree)
    public = {n for n in exc.__all__ if isinstance(getattr(exc, n), type)}
    assert public == drawn, f"not drawn: {public - drawn}, drawn but not exported: {drawn - public}"
    assert drawn <= set(polars_llm.__all__)


RETRY_AFTER = {"retry-after": "1"}
# (status, headers, body) -> the class error_for_status must return
STATUSES = [
    (400, {}, None, exc.BadRequestError),
    (401, {}, None, exc.AuthenticationError),
    (402, {}, None, exc.InsufficientCreditsError),
    (402, RETRY_AFTER, None, exc.RateLimitError),
    (403, {}, None, exc.PermissionDeniedError),
    (403, {}, '{"error": {"message": "flagged by moderation"}}', exc.ContentFilterError),
    (404, {}, None, exc.NotFoundError),
    (301, {"location": "https://elsewhere/v1/chat/completions"}, None, exc.NotFoundError),
    (302, {}, None, exc.NotFoundError),
    (303, {}, None, exc.NotFoundError),
    (307, {}, None, exc.NotFoundError),
    (308, {}, None, exc.NotFoundError),
    (408, {}, None, exc.APITimeoutError),
    (409, {}, None, exc.ServerError),
    (413, {}, None, exc.BadRequestError),
    (422, {}, None, exc.BadRequestError),
    (425, {}, None, exc.ServerError),
    (429, {}, None, exc.RateLimitError),
    (500, {}, None, exc.ServerError),
    (502, {}, None, exc.ServerError),
    (503, {}, None, exc.ServerError),
    (503, RETRY_AFTER, None, exc.ServerError),
    (504, {}, None, exc.ServerError),
]


@pytest.mark.parametrize(("status", "headers", "body", "cls"), STATUSES)
def test_statuses_map_to_the_drawn_class(
    status: int, headers: dict[str, str], body: str | None, cls: type[exc.APIError]
) -> None:
    assert type(error_for_status(status, headers, body)) is cls
    assert str(status) in drawing()[cls.__name__][1], f"{status} should be drawn beside {cls.__name__}"


def test_each_drawn_status_is_mapped_there() -> None:
    mapped = {(s, c.__name__) for s, _, _, c in STATUSES}
    for name, (_, text) in drawing().items():
        for status in re.findall(r"\b([1-5]\d\d)\b", text):
            assert (int(status), name) in mapped, f"{name} is drawn with {status}"


def _instance(cls: type[exc.APIError]) -> exc.APIError:
    return cls("x", status=None)


def test_what_is_drawn_as_retried_is_retried() -> None:
    tree = drawing()
    for name, (_, text) in tree.items():
        cls = getattr(exc, name)
        if not issubclass(cls, exc.APIError) or cls in (exc.APIError,):
            continue
        retried = next_delay(_instance(cls), 1, max_attempts=8, max_backoff=1.0) is not None
        drawn_retried = issubclass(cls, exc.TransientError) or "retried" in text
        assert retried == drawn_retried, f"{name}: retried={retried}, drawn as retried={drawn_retried}"
        if issubclass(cls, exc.FatalError):
            assert not is_retryable(_instance(cls))


def test_refused_is_a_real_field() -> None:
    err = exc.APIConnectionError("no", refused=True)
    assert err.refused is True and exc.APIConnectionError("x").refused is False
