"""Deterministic outputs of the simulator: plain text, schema-conforming JSON and token counts (vectors:
:mod:`._vectors`; strings matching a schema ``pattern``: :mod:`._patterns`).

Everything here is a pure function of its arguments, so a test can compute the exact answer the
server will give without talking to it:

>>> expected_text("m", "abc")
'm: cba'
>>> expected_text("m", "abc", system="be brief")
'm [be brief]: cba'
>>> schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 3}},
...           "required": ["n"], "additionalProperties": False}
>>> out = expected_json(schema, "m", "hi")
>>> out == expected_json(schema, "m", "hi"), out["n"] in (1, 2, 3)
(True, True)
>>> count_tokens("12345678")
2
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import random
import re
import uuid
from collections.abc import Mapping
from typing import Any, Final, TypeGuard

import orjson

from ._patterns import match_pattern
from ._semantic import pair_verdict, semantic_json, semantic_text

__all__ = [
    "count_tokens",
    "expected_content",
    "expected_json",
    "expected_text",
]

_MAX_DEPTH: Final = 6  # past this, optional branches (null, empty arrays) are preferred
_HARD_DEPTH: Final = 40  # impossible (infinitely recursive) schemas give up here with null
_WORDS: Final = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
    "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
)  # fmt: skip
_DATE_BASE: Final = _dt.date(2000, 1, 1).toordinal()
_DATE_SPAN: Final = _dt.date(2030, 12, 31).toordinal() - _DATE_BASE


def count_tokens(text: str | None) -> int:
    """The simulator's token estimate: ``max(1, len(text) // 4)``; ``0`` for ``None``."""
    if text is None:
        return 0
    return max(1, len(text) // 4)


def expected_text(model: str, prompt: str, system: str | None = None) -> str:
    """The plain-text answer: ``f"{model}: {prompt[::-1]}"``, or ``f"{model} [{system}]: ..."``.

    ``system`` is the system prompt (several system messages are joined with a newline); an empty
    system prompt counts as none. Markers such as ``[[flaky:500:1]]`` stay in ``prompt``.
    """
    summary = semantic_text(prompt) if "<text>" in prompt else None
    if summary is not None:  # a set operator's reduce request (see _semantic)
        return summary
    if system:
        return f"{model} [{system}]: {prompt[::-1]}"
    return f"{model}: {prompt[::-1]}"


def expected_json(schema: Mapping[str, Any], model: str, prompt: str, system: str | None = None) -> Any:
    """A JSON instance conforming to ``schema``, seeded only by ``(model, prompt)``.

    Supports objects (every property is filled, nested, ``$defs``/``definitions`` via ``$ref``,
    ``additionalProperties`` maps), arrays (1–3 items, within ``minItems``/``maxItems``),
    ``enum``, ``const``, ``anyOf``/``oneOf`` (including ``{"type": "null"}``), ``allOf``, type lists,
    strings (formats ``date``, ``date-time``, ``time``, ``email``, ``uuid``, ``uri``; lengths;
    simple ``pattern`` s), integers and numbers (bounds, ``multipleOf``), booleans and null.

    Answers read the prompt, so tests can assert what a row operator returns, not only its shape:

    * an ``enum`` picks the label the prompt names first (whole word, any case); a list of ``enum`` items
      every label it names; else a seeded choice;
    * a boolean is ``true`` when the prompt holds a keyword of the ``Condition:`` line of the system
      prompt (its words of 4+ letters, ``{placeholders}`` and a few filler verbs left out), else
      ``false``; without such a line, a seeded choice; over several ``name: value`` lines (a pair check
      of ``join`` or ``dedup``) the pair rules of :func:`~polars_llm.sim._semantic.pair_verdict` come
      first;
    * a string, integer or number property ``name`` takes the value written ``name: value`` in the prompt;
    * a packed request — a single ``answers`` array of exactly N items and a prompt
      ``{"items": [...]}`` of N texts — answers item *i* as the unpacked request of text *i* would be.

    >>> expected_json({"enum": ["spam", "ham"]}, "m", "Is this SPAM?")
    'spam'
    >>> expected_json({"type": "boolean"}, "m", "it came late", system="Condition: mentions late delivery")
    True
    """
    semantic = semantic_json(prompt, schema)
    properties = schema.get("properties") if isinstance(schema, Mapping) else None
    if semantic is not None and isinstance(properties, Mapping) and set(semantic) <= set(properties):
        return semantic  # a set operator's check or ranking (see _semantic)
    packed = _packed_items(schema, prompt)
    if packed is not None:
        item_schema, texts = packed
        items = [_generator(schema, model, text, system).value(item_schema, 0, "value") for text in texts]
        return {"answers": items}
    out = _generator(schema, model, prompt, system).value(schema, 0, "value")
    summary = semantic_text(prompt) if "<text>" in prompt else None
    if summary is not None and isinstance(out, dict) and isinstance(properties, Mapping):
        for name, sub in properties.items():  # a structured reduce: its first string field summarises
            if isinstance(sub, Mapping) and sub.get("type") == "string" and "enum" not in sub:
                out[name] = summary
                break
    return out


def _generator(schema: Mapping[str, Any], model: str, prompt: str, system: str | None) -> _Gen:
    digest = hashlib.blake2b(
        f"{model}\x00{prompt}".encode("utf-8", "surrogatepass"), digest_size=8, person=b"polars_llm_sim"
    ).digest()
    rng = random.Random(int.from_bytes(digest, "big"))
    return _Gen(schema, rng, prompt, _condition_words(system), pair_verdict(prompt, system))


def _packed_items(schema: Mapping[str, Any], prompt: str) -> tuple[Any, list[str]] | None:
    """A packed request's item schema and texts (see :func:`expected_json`), else ``None``."""
    props = schema.get("properties")
    if not (isinstance(props, Mapping) and list(props) == ["answers"] and prompt.startswith('{"items"')):
        return None
    answers = props["answers"]
    n = answers.get("minItems") if isinstance(answers, Mapping) else None
    if not isinstance(n, int) or answers.get("maxItems") != n:
        return None
    try:
        doc = orjson.loads(prompt)
    except orjson.JSONDecodeError:
        return None
    texts = doc.get("items") if isinstance(doc, dict) else None
    if not (isinstance(texts, list) and len(texts) == n and all(isinstance(t, str) for t in texts)):
        return None
    return answers.get("items"), texts


_FILLER: Final = frozenset({
    "mentions", "mention", "mentioned", "about", "text", "says", "talks", "refers", "contains", "describes",
    "describe", "this", "that", "with", "which", "their", "there", "some", "whether", "does", "have",
})  # fmt: skip


def _condition_words(system: str | None) -> tuple[str, ...] | None:
    if not system:
        return None
    found = re.search(r"^Condition:(.*)$", system, re.MULTILINE)
    if found is None:
        return None
    condition = re.sub(r"\{[^}]*\}", " ", found.group(1).lower())
    return tuple(w for w in re.findall(r"[a-z]{4,}", condition) if w not in _FILLER)


def _named(text: str, word: str) -> int:
    """Where ``word`` first appears in ``text`` as a whole word (any case), or -1."""
    found = re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE)
    return found.start() if found else -1


def _written(text: str, name: str, kind: str) -> Any:
    """The value written ``name: value`` in ``text`` (converted to ``kind``), else ``None``."""
    label = re.escape(name).replace("_", "[_ ]")
    found = re.search(rf"(?<!\w){label}\s*[:=]\s*([^,;\n]+)", text, re.IGNORECASE)
    if found is None:
        return None
    value = found.group(1).strip().rstrip(".").strip()
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
    except ValueError:
        return None
    return value or None


def expected_content(
    model: str,
    prompt: str,
    system: str | None = None,
    response_format: Mapping[str, Any] | None = None,
) -> str:
    """The exact ``message.content`` string of a normal (un-faulted) answer.

    With ``response_format={"type": "json_schema", ...}`` it is compact JSON of :func:`expected_json`;
    with ``{"type": "json_object"}`` it is ``{"model": model, "answer": expected_text(...)}``.
    """
    kind = response_format.get("type") if response_format else None
    if kind == "json_schema":
        assert response_format is not None
        schema = response_format["json_schema"]["schema"]
        return orjson.dumps(expected_json(schema, model, prompt, system)).decode()
    if kind == "json_object":
        return orjson.dumps({"model": model, "answer": expected_text(model, prompt, system)}).decode()
    return expected_text(model, prompt, system)


class _Gen:
    __slots__ = ("_condition", "_pair", "_rng", "_root", "_text")

    def __init__(
        self,
        root: Mapping[str, Any],
        rng: random.Random,
        text: str = "",
        condition: tuple[str, ...] | None = None,
        pair: bool | None = None,
    ) -> None:
        self._root = root
        self._rng = rng
        self._text = text
        self._condition = condition
        self._pair = pair  # a pair check's answer, when the input is one (see _semantic)

    def _labels(self, labels: list[Any]) -> list[Any]:
        """The string labels the text names, in the order it names them."""
        at = [(self._named_at(label), i) for i, label in enumerate(labels) if isinstance(label, str)]
        return [labels[i] for pos, i in sorted(at) if pos >= 0]

    def _named_at(self, label: str) -> int:
        return _named(self._text, label) if label else -1

    def value(self, schema: Any, depth: int, name: str) -> Any:
        if schema is True or schema is None:
            schema = {}
        if not isinstance(schema, Mapping) or depth > _HARD_DEPTH:
            return None
        if "$ref" in schema:
            return self.value(self._resolve(schema["$ref"]), depth + 1, name)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            named = self._labels(enum)
            return named[0] if named else self._rng.choice(enum)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return self.value(self._pick_branch(options, depth), depth + 1, name)
        all_of = schema.get("allOf")
        if isinstance(all_of, list) and all_of:
            return self.value(self._merge(schema, all_of), depth + 1, name)
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if isinstance(k, str)] or ["string"]
            kind = "null" if depth >= _MAX_DEPTH and "null" in kinds else self._rng.choice(kinds)
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema:
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                kind = "string"
        if kind == "object":
            return self._object(schema, depth, name)
        if kind == "array":
            return self._array(schema, depth, name)
        if kind == "string":
            return self._string(schema, name)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            if self._pair is not None:
                return self._pair
            if self._condition is not None:
                return any(_named(self._text, word) >= 0 for word in self._condition)
            return self._rng.random() < 0.5
        return None

    def _resolve(self, ref: Any) -> Any:
        if not isinstance(ref, str) or not ref.startswith("#"):
            return {}
        node: Any = self._root
        for part in ref[1:].split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, Mapping):
                node = node.get(part, {})
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return {}
        return node

    def _pick_branch(self, options: list[Any], depth: int) -> Any:
        if depth >= _MAX_DEPTH:
            for option in options:
                if isinstance(option, Mapping) and option.get("type") == "null":
                    return option
        return self._rng.choice(options)

    def _merge(self, schema: Mapping[str, Any], parts: list[Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        properties: dict[str, Any] = dict(merged.get("properties") or {})
        required: list[Any] = list(merged.get("required") or [])
        for part in parts:
            if isinstance(part, Mapping) and "$ref" in part:
                part = self._resolve(part["$ref"])
            if not isinstance(part, Mapping):
                continue
            for key, val in part.items():
                if key == "properties" and isinstance(val, Mapping):
                    properties.update(val)
                elif key == "required" and isinstance(val, list):
                    required.extend(r for r in val if r not in required)
                else:
                    merged.setdefault(key, val)
        if properties:
            merged["properties"] = properties
        if required:
            merged["required"] = required
        return merged

    def _object(self, schema: Mapping[str, Any], depth: int, name: str) -> dict[str, Any]:
        props = schema.get("properties")
        out: dict[str, Any] = {}
        if isinstance(props, Mapping):
            for key, sub in props.items():
                written = self._written(key, sub)
                out[key] = written if written is not None else self.value(sub, depth + 1, key)
        extra = schema.get("additionalProperties")
        if not out and isinstance(extra, Mapping):
            low = int(schema.get("minProperties") or 0)
            count = low if depth >= _MAX_DEPTH else max(low, self._rng.randint(1, 2))
            for i in range(count):
                out[f"{name}_{i + 1}"] = self.value(extra, depth + 1, name)
        return out

    def _written(self, name: str, schema: Any) -> Any:
        """The value the text writes for property ``name`` (a string, integer or number), else ``None``."""
        if not isinstance(schema, Mapping) or ":" not in self._text:
            return None
        kinds = [schema.get("type")]
        for option in schema.get("anyOf") or ():
            if isinstance(option, Mapping):
                kinds.append(option.get("type"))
        kind = next((k for k in kinds if k in ("string", "integer", "number")), None)
        if kind is None or "enum" in schema or "format" in schema:
            return None
        return _written(self._text, name, kind)

    def _array(self, schema: Mapping[str, Any], depth: int, name: str) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items")
        if isinstance(items, list):  # draft-04 tuple form
            prefix, items = items, schema.get("additionalItems")
        if isinstance(prefix, list):
            return [self.value(sub, depth + 1, name) for sub in prefix]
        low = max(int(schema.get("minItems") or 0), 0)
        high = schema.get("maxItems")
        high = int(high) if isinstance(high, int | float) else max(low, 3)
        if depth >= _MAX_DEPTH:
            count = low
        else:
            count = self._rng.randint(min(max(low, 1), high), max(min(high, max(low, 3)), 0))
        labels = items.get("enum") if isinstance(items, Mapping) else None
        named = self._labels(labels) if isinstance(labels, list) else []
        if named and low <= len(named) <= high:  # every label the text names, in the schema's order
            return [label for label in labels if label in named]  # type: ignore[union-attr]
        unique = bool(schema.get("uniqueItems"))
        out: list[Any] = []
        seen: set[bytes] = set()
        tries = 0
        while len(out) < count and tries < count * 8 + 8:
            tries += 1
            item = self.value(items, depth + 1, name)
            if unique:
                key = orjson.dumps(item, option=orjson.OPT_SORT_KEYS)
                if key in seen:
                    continue
                seen.add(key)
            out.append(item)
        return out

    def _string(self, schema: Mapping[str, Any], name: str) -> str:
        rng = self._rng
        fmt = schema.get("format")
        if fmt == "date":
            return _dt.date.fromordinal(_DATE_BASE + rng.randrange(_DATE_SPAN)).isoformat()
        if fmt == "date-time":
            day = _dt.date.fromordinal(_DATE_BASE + rng.randrange(_DATE_SPAN)).isoformat()
            return f"{day}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z"
        if fmt == "time":
            return f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}Z"
        if fmt == "email":
            return f"{rng.choice(_WORDS)}.{rng.randrange(1000)}@example.com"
        if fmt == "uuid":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if fmt in ("uri", "url", "iri"):
            return f"https://example.com/{rng.choice(_WORDS)}/{rng.randrange(1000)}"
        if fmt == "ipv4":
            return ".".join(str(rng.randrange(1, 255)) for _ in range(4))
        text = f"{name} {rng.choice(_WORDS)} {rng.randrange(1000)}"
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            text = match_pattern(pattern, text, rng, _WORDS)
        low = schema.get("minLength")
        high = schema.get("maxLength")
        if isinstance(low, int) and len(text) < low:
            text = text + "x" * (low - len(text))
        if isinstance(high, int) and len(text) > high:
            text = text[: max(high, 0)]
        return text

    def _bounds(self, schema: Mapping[str, Any], step: float) -> tuple[float | None, float | None]:
        low = schema.get("minimum")
        high = schema.get("maximum")
        ex_low = schema.get("exclusiveMinimum")
        ex_high = schema.get("exclusiveMaximum")
        if ex_low is True and _num(low):  # draft-04 boolean form
            low, ex_low = None, low
        if ex_high is True and _num(high):
            high, ex_high = None, high
        lo = float(low) if _num(low) else None
        hi = float(high) if _num(high) else None
        if _num(ex_low):
            lo = max(lo, float(ex_low) + step) if lo is not None else float(ex_low) + step
        if _num(ex_high):
            hi = min(hi, float(ex_high) - step) if hi is not None else float(ex_high) - step
        return lo, hi

    def _integer(self, schema: Mapping[str, Any]) -> int:
        lo, hi = self._bounds(schema, 1)
        low = math.ceil(lo) if lo is not None else None
        high = math.floor(hi) if hi is not None else None
        if low is None and high is None:
            low, high = 0, 1000
        elif low is None:
            assert high is not None
            low = high - 1000
        elif high is None:
            high = low + 1000
        assert low is not None and high is not None
        if high < low:
            return low
        step = schema.get("multipleOf")
        if isinstance(step, int) and not isinstance(step, bool) and step > 0:
            first, last = -(-low // step), high // step
            if last >= first:
                return self._rng.randint(first, last) * step
        return self._rng.randint(low, high)

    def _number(self, schema: Mapping[str, Any]) -> float:
        lo, hi = self._bounds(schema, 0.01)
        if lo is None and hi is None:
            lo, hi = 0.0, 1000.0
        elif lo is None:
            assert hi is not None
            lo = hi - 1000.0
        elif hi is None:
            hi = lo + 1000.0
        assert lo is not None and hi is not None
        if hi < lo:
            return lo
        step = schema.get("multipleOf")
        if _num(step) and step > 0:
            first, last = math.ceil(lo / step), math.floor(hi / step)
            if last >= first:
                return float(self._rng.randint(first, last) * step)
        value = round(self._rng.uniform(lo, hi), 2)
        return min(max(value, lo), hi)


def _num(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
