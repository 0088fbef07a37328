"""How many input tokens one request of a set operator may hold: ``max_input_tokens``, else what the
provider lists as the model's context length, else :data:`~.settings.DEFAULT_MAX_INPUT_TOKENS`.

The list is ``GET {base_url}/models`` (OpenRouter's shape: ``context_length`` on each entry, or
``top_provider.context_length``), asked once per endpoint and model in a process; no completion request.
Of a listed context, the answer's room (``max_tokens``, else :data:`ANSWER_ROOM`) is kept free and
:data:`MARGIN` of the rest is used, since tokens are counted at 4 characters each, without a tokenizer.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any, Final

from .._config import MapConfig
from .settings import DEFAULT_MAX_INPUT_TOKENS

__all__ = ["ANSWER_ROOM", "MARGIN", "input_tokens", "listed_context"]

ANSWER_ROOM: Final = 4_096
MARGIN: Final = 0.75
_TIMEOUT: Final = 5.0
_LISTED: dict[tuple[str, str], int | None] = {}
_LOCK = threading.Lock()


def _context_of(doc: Any, model: str) -> int | None:
    """The listed context length of ``model`` in a ``/models`` answer.

    >>> _context_of({"data": [{"id": "m", "context_length": 128000}]}, "m")
    128000
    >>> _context_of({"data": [{"id": "m", "top_provider": {"context_length": 8192}}]}, "m")
    8192
    """
    data = doc.get("data") if isinstance(doc, dict) else None
    for entry in data if isinstance(data, list) else []:
        if isinstance(entry, dict) and entry.get("id") == model:
            top = entry.get("top_provider") if isinstance(entry.get("top_provider"), dict) else {}
            value = entry.get("context_length") or top.get("context_length")
            return value if isinstance(value, int) and value > 0 else None
    return None


def listed_context(cfg: MapConfig) -> int | None:
    """The model's context length as its endpoint lists it (``None``: no list, or not listed there)."""
    if cfg.worker is not None or cfg.model is None:
        return None
    key = (cfg.url, cfg.model)
    with _LOCK:
        if key in _LISTED:
            return _LISTED[key]
    request = urllib.request.Request(
        cfg.url + "/models", headers={"Authorization": f"Bearer {cfg.key}", "User-Agent": "polars-llm"}
    )
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
            listed = _context_of(json.loads(response.read()), cfg.model)
    except (urllib.error.URLError, OSError, ValueError, TimeoutError):
        listed = None
    with _LOCK:
        _LISTED[key] = listed
    return listed


def input_tokens(cfg: MapConfig, given: int | None) -> int:
    """The input tokens one request may hold (see the module docstring)."""
    if given is not None:
        return given
    listed = listed_context(cfg)
    if listed is None:
        return DEFAULT_MAX_INPUT_TOKENS
    room = cfg.max_tokens if cfg.max_tokens is not None else ANSWER_ROOM
    return max(int((listed - room) * MARGIN), 256)
