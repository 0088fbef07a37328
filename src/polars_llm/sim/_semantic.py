"""Meaningful answers of the simulator to the set operators' requests (reduce, pair checks, ranking).

The set operators (:mod:`polars_llm._operators`) phrase their requests in a few fixed shapes; when a
prompt has one of them, the simulator answers it by a visible rule instead of reversing the prompt, so
tests and benchmarks can assert results:

* **reduce** — a prompt holding ``<text>`` … ``</text>`` blocks is summarised as ``"summary: "`` and
  the :data:`SUMMARY_WORDS` most frequent words (3+ letters, not stop words) of the blocks, most
  frequent first (ties: first seen);
* **statement check** — ``Is the following statement true?`` … ``Statement: <s>``: true when a
  ``#tag`` occurs at least twice in ``<s>`` (planted pairs share a tag);
* **same entity** — ``Do these two values refer to the same entity?`` with ``A: <a>`` and ``B: <b>``:
  true when their words are equal once lower-cased and stripped of legal suffixes (Inc, Ltd, ...);
* **ranking** — items ``[1] …``, ``[2] …`` and ``the numbers of the <j> best items``: the ``j`` items
  whose last number is largest, largest first (ties: listed first; no number ranks last).

>>> semantic_text("Do\\n\\n<text>\\nbroken lid, broken handle\\n</text>\\n<text>\\nlid loose\\n</text>")
'summary: broken lid handle loose'
>>> semantic_json("Is the following statement true?\\n\\nStatement: ad #a1 fits cv #a1", {})
{'answer': True}
>>> semantic_json("Do these two values refer to the same entity?\\n\\nA: Acme Inc.\\nB: ACME", {})
{'answer': True}
>>> semantic_json("Urgent: give the numbers of the 2 best items.\\n\\n[1] p 3\\n[2] p 9\\n[3] p 5", {})
{'ranking': [2, 3]}
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Final

__all__ = ["SUMMARY_WORDS", "semantic_json", "semantic_text"]

SUMMARY_WORDS: Final = 8
_BLOCK: Final = re.compile(r"<text>\n(.*?)\n</text>", re.DOTALL)
_WORD: Final = re.compile(r"[a-z]{3,}")
_STOP: Final = frozenset(
    [
        "the", "and", "for", "with", "that", "this", "was", "are", "but", "not", "you", "have", "had",
        "has", "from", "they", "them", "their", "its", "our", "out", "all", "any", "can", "too", "very",
        "just", "into", "over", "than", "then", "there", "what", "when", "which", "who", "will", "would",
        "been", "were", "summary",
    ]
)  # fmt: skip
_STATEMENT: Final = "Is the following statement true?"
_ENTITY: Final = "Do these two values refer to the same entity?"
_TAG: Final = re.compile(r"#\w+")
_SUFFIXES: Final = frozenset(
    [
        "inc", "incorporated", "ltd", "limited", "llc", "corp", "corporation", "co", "company", "gmbh",
        "plc", "sa", "ag", "the",
    ]
)  # fmt: skip
_ITEM: Final = re.compile(r"^\[(\d+)\] (.*)$", re.MULTILINE)
_BEST: Final = re.compile(r"the numbers of the (\d+) best items")
_NUMBER: Final = re.compile(r"-?\d+(?:\.\d+)?")


def _summary(prompt: str) -> str | None:
    blocks = _BLOCK.findall(prompt)
    if not blocks:
        return None
    counts = Counter(w for block in blocks for w in _WORD.findall(block.lower()) if w not in _STOP)
    top = sorted(counts, key=lambda w: -counts[w])[:SUMMARY_WORDS]  # sorted() is stable: first seen wins
    return "summary: " + " ".join(top)


def _entity_words(value: str) -> list[str]:
    return [w for w in re.findall(r"\w+", value.lower()) if w not in _SUFFIXES]


def _verdict(prompt: str) -> bool | None:
    if prompt.startswith(_STATEMENT):
        statement = prompt.partition("Statement: ")[2]
        tags = Counter(_TAG.findall(statement))
        return any(n >= 2 for n in tags.values())
    if prompt.startswith(_ENTITY):
        a = re.search(r"^A: (.*)$", prompt, re.MULTILINE)
        b = re.search(r"^B: (.*)$", prompt, re.MULTILINE)
        if a is None or b is None:
            return None
        return _entity_words(a.group(1)) == _entity_words(b.group(1))
    return None


def _score(text: str) -> float:
    numbers = _NUMBER.findall(text)
    return float(numbers[-1]) if numbers else float("-inf")


def _ranking(prompt: str) -> list[int] | None:
    best = _BEST.search(prompt)
    items = _ITEM.findall(prompt)
    if best is None or not items:
        return None
    order = sorted(items, key=lambda item: -_score(item[1]))  # stable: ties keep their listed order
    return [int(number) for number, _ in order[: int(best.group(1))]]


def semantic_text(prompt: str) -> str | None:
    """The plain-text answer to a set operator's request, or ``None`` for any other prompt."""
    return _summary(prompt) if "<text>" in prompt else None


def semantic_json(prompt: str, schema: Any) -> dict[str, Any] | None:
    """The structured answer (``{"answer": bool}`` or ``{"ranking": [...]}``) to a set operator's check or
    ranking request, or ``None`` for any other prompt (then the schema decides, as usual)."""
    verdict = _verdict(prompt)
    if verdict is not None:
        return {"answer": verdict}
    ranking = _ranking(prompt) if "best items" in prompt else None
    if ranking is not None:
        return {"ranking": ranking}
    return None
