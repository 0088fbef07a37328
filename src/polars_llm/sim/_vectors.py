"""The simulator's embeddings: a deterministic vector per ``(model, text)``.

A pure function of its arguments, so a test can compute the exact vector the server will give.
"""

from __future__ import annotations

import array
import hashlib
import re
import sys
from typing import Final

__all__ = ["expected_embedding"]

_EMBED_SCALE: Final = 1.0 / 32768


def expected_embedding(model: str, text: str, dimensions: int) -> list[float]:
    """The embedding of ``text``: ``dimensions`` values in ``[-1, 1)``, seeded only by ``(model, text)``.

    Every value is a multiple of 1/32768, so it is exact in Float32; a shorter vector is a prefix of a
    longer one (as with models that honour ``dimensions`` by truncation). It is the mean of a random
    vector for the whole text and one for each of its words (lower-cased ``\\w+`` runs), so texts that
    share words point in similar directions (what embedding blocking needs); a one-word text is just
    its own random vector.

    >>> v = expected_embedding("m", "hi", 4)
    >>> len(v), v == expected_embedding("m", "hi", 8)[:4], all(-1 <= x < 1 for x in v)
    (4, True, True)
    """
    words = re.findall(r"\w+", text.lower())
    if words == [text] or not words:
        return _random_vector(model, text, dimensions)
    parts = [_random_vector(model, t, dimensions) for t in (text, *words)]
    scale = 32768 / len(parts)
    return [round(sum(column) * scale) * _EMBED_SCALE for column in zip(*parts, strict=True)]


def _random_vector(model: str, text: str, dimensions: int) -> list[float]:
    digest = hashlib.shake_128(f"{model}\x00{text}".encode("utf-8", "surrogatepass")).digest(2 * dimensions)
    values = array.array("h")
    values.frombytes(digest)
    if sys.byteorder != "little":  # pragma: no cover - the same vectors on every machine
        values.byteswap()
    return list(map(_EMBED_SCALE.__mul__, values))
