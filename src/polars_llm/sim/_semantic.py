"""Meaningful answers of the simulator to the set operators' requests (reduce, pair checks, ranking).

The set operators (:mod:`polars_llm._operators`) phrase their requests in a few fixed shapes; when a
prompt has one of them, the simulator answers it by a visible rule instead of reversing the prompt, so
tests and benchmarks can assert results:

* **reduce** — a prompt holding ``<text>`` … ``</text>`` blocks is summarised as ``"summary: "`` and
  the :data:`SUMMARY_WORDS` most frequent words (3+ letters, not stop words) of the blocks, most
  frequent first (ties: first seen);
* **pair checks** — ``filter``'s boolean answer (``join`` and ``dedup`` check their candidate pairs
  with it) when the input lists several values as ``name: value`` lines (a condition naming several
  columns, packed or not), :func:`pair_verdict`:

  - **same entity** — the ``Condition:`` line of the system prompt says ``same entity`` and there are
    two values: true when their words are equal once lower-cased and stripped of legal suffixes
    (Inc, Ltd, ...);
  - **shared tag** — else, when the values hold ``#tags``: true when one tag occurs in two different
    values (planted pairs share a tag), false when none does; without tags, the ordinary keyword rule
    of ``expected_json`` decides;
* **ranking** — items ``[1] …``, ``[2] …`` and ``the numbers of the <j> best items``: the ``j`` items
  whose last number is largest, largest first (ties: listed first; no number ranks last).

>>> semantic_text("Do\\n\\n<text>\\nbroken lid, broken handle\\n</text>\\n<text>\\nlid loose\\n</text>")
'summary: broken lid handle loose'
>>> pair_verdict("left.ad: python dev #a1\\nright.cv: coder #a1", "Condition: {left.ad} fits {right.cv}")
True
>>> pair_verdict("A: Acme Inc.\\nB: ACME", "Condition: Same entity? (values: {A}, {B})")
True
>>> semantic_json("Urgent: give the numbers of the 2 best items.\\n\\n[1] p 3\\n[2] p 9\\n[3] p 5", {})
{'ranking': [2, 3]}
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Final

__all__ = ["SUMMARY_WORDS", "pair_verdict", "semantic_json", "semantic_text"]

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
_VALUE: Final = re.compile(r"^[\w.]+: ", re.MULTILINE)  # where each ``name: value`` line starts
_CONDITION: Final = re.compile(r"^Condition:(.*)$", re.MULTILINE)
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


def pair_verdict(text: str, system: str | None) -> bool | None:
    """``filter``'s answer for a condition over several values (see the module docstring), or ``None``
    when ``text`` is not such an input or holds nothing the rules read."""
    starts = [m.start() for m in _VALUE.finditer(text)]
    if len(starts) < 2 or starts[0] != 0:
        return None
    values = [text[a:b].partition(": ")[2] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    condition = _CONDITION.search(system or "")
    if condition is not None and "same entity" in condition.group(1).lower() and len(values) == 2:
        return _entity_words(values[0]) == _entity_words(values[1])
    tags = [set(_TAG.findall(value)) for value in values]
    if not any(tags):
        return None
    return any(tags[i] & tags[j] for i in range(len(tags)) for j in range(i + 1, len(tags)))


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
    """The structured answer (``{"ranking": [...]}``) to a set operator's ranking request, or ``None`` for
    any other prompt (then the schema decides, as usual; pair checks are ``filter``'s booleans, see
    :func:`pair_verdict`)."""
    ranking = _ranking(prompt) if "best items" in prompt else None
    if ranking is not None:
        return {"ranking": ranking}
    return None
