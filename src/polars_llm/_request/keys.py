"""Content keys: one stable 128-bit hex key per request.

A key covers everything that changes the answer: base URL, model, system prompt, generation
parameters, response schema and the prompt. It is built from canonical JSON and BLAKE2b, so it is the
same across library, Polars and Python versions (never ``Series.hash``). The API key is not part of it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from json.encoder import encode_basestring  # type: ignore[attr-defined]  (what json.dumps uses)
from typing import Any

__all__ = ["KEY_VERSION", "KeyMaker", "fingerprint_template", "request_fingerprint"]

KEY_VERSION = 1


def request_fingerprint(
    *,
    base_url: str,
    model: str,
    system: str | None,
    params: Mapping[str, Any],
    schema: Mapping[str, Any] | None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """Canonical bytes describing everything about a request except the prompt.

    ``extra`` describes what else a request carries beyond the prompt (a struct row's images and
    earlier turns, or the kind of request for embeddings); it is left out of the document when ``None``,
    so the keys of plain chat requests are those of every earlier release.
    """
    doc: dict[str, Any] = {
        "v": KEY_VERSION,
        "base_url": base_url.rstrip("/"),
        "model": model,
        "system": system,
        "params": dict(params),
        "schema": schema,
    }
    if extra is not None:
        doc["extra"] = dict(extra)
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


_MODEL, _SYSTEM = "\x00model\x00", "\x00system\x00"  # placeholders no real fingerprint holds


def fingerprint_template(
    *, base_url: str, params: Mapping[str, Any], schema: Mapping[str, Any] | None
) -> Callable[[str, str | None], bytes]:
    """``(model, system) -> request_fingerprint(...)`` for one base URL, parameters and schema, without
    a ``json.dumps`` per call (struct rows with a system prompt each): the document is dumped once with
    placeholders, which are then replaced by the values encoded exactly as ``json.dumps`` encodes them.

    >>> make = fingerprint_template(base_url="u", params={"t": 0}, schema=None)
    >>> make("m", "be brief") == request_fingerprint(base_url="u", model="m", system="be brief",
    ...                                               params={"t": 0}, schema=None)
    True
    """
    doc = request_fingerprint(base_url=base_url, model=_MODEL, system=_SYSTEM, params=params, schema=schema)
    text = doc.decode()
    model_at, system_at = encode_basestring(_MODEL), encode_basestring(_SYSTEM)
    if text.count(model_at) != 1 or text.count(system_at) != 1 or text.find(model_at) > text.find(system_at):

        def slow(model: str, system: str | None) -> bytes:
            return request_fingerprint(
                base_url=base_url, model=model, system=system, params=params, schema=schema
            )

        return slow
    head, rest = text.split(model_at)
    middle, tail = rest.split(system_at)

    def fast(model: str, system: str | None) -> bytes:
        shown = "null" if system is None else encode_basestring(system)
        return f"{head}{encode_basestring(model)}{middle}{shown}{tail}".encode()

    return fast


class KeyMaker:
    """Hashes prompts under one request fingerprint.

    >>> km = KeyMaker(request_fingerprint(base_url="http://x/v1", model="m", system=None, params={},
    ...                                   schema=None))
    >>> k = km.key("hello")
    >>> len(k), k == km.key("hello"), k == km.key("hello!")
    (32, True, False)
    """

    __slots__ = ("_base",)

    def __init__(self, fingerprint: bytes) -> None:
        base = hashlib.blake2b(digest_size=16, person=b"polars_llm")
        base.update(fingerprint)
        base.update(b"\x00")
        self._base = base

    def key(self, prompt: str) -> str:
        h = self._base.copy()
        h.update(prompt.encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    def keys(self, prompts: Iterable[str]) -> list[str]:
        base = self._base
        out = []
        append = out.append
        for prompt in prompts:
            h = base.copy()
            h.update(prompt.encode("utf-8", "surrogatepass"))
            append(h.hexdigest())
        return out
