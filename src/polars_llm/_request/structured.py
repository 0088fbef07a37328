"""Structured output: one pydantic ``response_model`` drives the request (:func:`response_format`) and the
check of each answer (:func:`validate_text`); the result column it gives is :mod:`.result_column`'s
(:func:`~.result_column.struct_dtype`, :func:`~.result_column.to_series`).
"""

import functools
import operator
import re
from collections.abc import Iterator
from typing import Any, Final

import orjson
from pydantic import BaseModel, ValidationError

from .._config import check_model
from ..exceptions import OutputValidationError

__all__ = ["response_format", "schema_fingerprint", "validate_text"]

# --- response_format ---------------------------------------------------------------------------------

# Keywords strict mode rejects that only annotate or constrain: pydantic still checks every answer.
_DROP: Final = frozenset({
    "default", "examples", "deprecated", "readOnly", "writeOnly", "discriminator", "$comment", "minLength",
    "maxLength", "uniqueItems", "minProperties", "maxProperties", "contentEncoding", "contentMediaType",
})  # fmt: skip
_FORMATS: Final = frozenset(
    {"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"}
)
# Structural keywords strict mode cannot express: the schema is sent with ``strict: false``.
_NON_STRICT: Final = frozenset({
    "prefixItems", "additionalItems", "not", "if", "then", "else", "patternProperties", "propertyNames",
    "dependentRequired", "dependentSchemas", "contains", "unevaluatedProperties", "unevaluatedItems",
})  # fmt: skip
_SUB_MAPS: Final = frozenset({"properties", "$defs", "definitions", "patternProperties", "dependentSchemas"})
_SUB_LISTS: Final = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SUB_ONE: Final = frozenset({"items", "additionalProperties", "not", "if", "then", "else", "contains"})
_TYPED: Final = ("type", "anyOf", "$ref", "enum", "const", "allOf")
_NAME_BAD: Final = re.compile(r"[^a-zA-Z0-9_-]")


class _Strictifier:
    """Rewrites a pydantic JSON schema for OpenAI strict mode; ``strict`` drops to False if it cannot."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.strict = True
        self._inlining: list[str] = []

    def node(self, schema: Any) -> Any:
        if not isinstance(schema, dict):
            return schema
        ref = schema.get("$ref")
        if isinstance(ref, str) and len(schema) > 1:
            # Strict mode wants a bare ``$ref``: inline the target, siblings (description…) win.
            if ref in self._inlining or not ref.startswith("#/"):
                return {"$ref": ref}
            target = functools.reduce(operator.getitem, ref[2:].split("/"), self.root)
            self._inlining.append(ref)
            try:
                return self.node({**target, **{k: v for k, v in schema.items() if k != "$ref"}})
            finally:
                self._inlining.pop()
        out: dict[str, Any] = {}
        for key in sorted(schema):
            value = schema[key]
            if key in _DROP or (key == "format" and value not in _FORMATS):
                continue
            if key in _NON_STRICT:
                self.strict = False
            if key in _SUB_MAPS and isinstance(value, dict):
                items = value.items() if key == "properties" else sorted(value.items())
                value = {k: self.node(v) for k, v in items}
            elif key in _SUB_LISTS and isinstance(value, list):
                value = [self.node(v) for v in value]
            elif key in _SUB_ONE:
                value = self.node(value)
            out[key] = value
        if "oneOf" in out:  # discriminated unions: strict mode knows anyOf only
            out["anyOf"] = [*out.pop("anyOf", []), *out.pop("oneOf")]
        all_of = out.get("allOf")
        if isinstance(all_of, list) and len(all_of) == 1 and isinstance(all_of[0], dict):
            del out["allOf"]
            return self.node({**all_of[0], **out})  # node() is idempotent
        if "properties" in out:  # a model: every property required, nothing else allowed
            if isinstance(out.get("additionalProperties"), dict):
                self.strict = False
            else:
                out["additionalProperties"] = False
            out["required"] = list(out["properties"])
        elif out.get("type") == "object":  # dict[str, X] / bare dict: a free-form map
            self.strict = False
        if not any(k in out for k in _TYPED):  # Any
            self.strict = False
        return dict(sorted(out.items()))


@functools.lru_cache(maxsize=256)
def _response_format_bytes(model: type[BaseModel]) -> bytes:
    raw = model.model_json_schema(mode="validation")
    fixer = _Strictifier(raw)
    schema = fixer.node(raw)
    name = _NAME_BAD.sub("_", model.__name__)[:64] or "response"
    doc = {"type": "json_schema", "json_schema": {"name": name, "strict": fixer.strict, "schema": schema}}
    return orjson.dumps(doc)


def response_format(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAI ``response_format`` asking for JSON that matches ``model``.

    The schema follows strict-mode rules: every object has ``additionalProperties: false`` and lists all
    its properties in ``required`` (``X | None`` fields are ``anyOf [X, {"type": "null"}]``), ``$defs``
    and ``$ref`` are kept, defaults and unsupported constraints (``minLength``, ``uniqueItems``, unknown
    ``format``…) are dropped; pydantic still enforces them on the answer. Schemas strict mode cannot
    express (``dict[str, X]``, ``Any``, ``tuple[X, Y]``) are sent with ``strict: false``. Keys are
    sorted, except ``properties``, which keep field order (the order the model writes them in).

    >>> from pydantic import BaseModel
    >>> class City(BaseModel):
    ...     name: str
    ...     population: int | None = None
    >>> rf = response_format(City)
    >>> rf["json_schema"]["name"], rf["json_schema"]["strict"]
    ('City', True)
    >>> schema = rf["json_schema"]["schema"]
    >>> schema["required"], schema["additionalProperties"], schema["properties"]["population"]["anyOf"]
    (['name', 'population'], False, [{'type': 'integer'}, {'type': 'null'}])
    """
    return orjson.loads(_response_format_bytes(check_model(model)))


def schema_fingerprint(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON-able schema document that enters the content key (equal to :func:`response_format`).

    >>> from pydantic import BaseModel
    >>> class A(BaseModel):
    ...     x: int
    >>> schema_fingerprint(A) == response_format(A)
    True
    """
    return response_format(model)


# --- validate_text -----------------------------------------------------------------------------------

_FENCE: Final = re.compile(r"```[ \t]*[A-Za-z0-9_-]*[ \t]*\r?\n?(.*?)\r?\n?[ \t]*```", re.DOTALL)


def _candidates(text: str) -> Iterator[str]:
    """The answer itself, then the first fenced block, then the outermost ``{...}``."""
    stripped = text.strip()
    yield stripped
    if fenced := _FENCE.search(stripped):
        yield fenced.group(1).strip()
    start, end = stripped.find("{"), stripped.rfind("}")
    if 0 <= start < end and (start, end) != (0, len(stripped) - 1):
        yield stripped[start : end + 1]


def _summary(model: type[BaseModel], exc: ValidationError, limit: int = 5) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    parts = [f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in errors[:limit]]
    parts += [f"… {len(errors) - limit} more"] if len(errors) > limit else []
    noun = "error" if len(errors) == 1 else "errors"
    return f"output does not match {model.__name__} ({len(errors)} validation {noun}): {'; '.join(parts)}"


def validate_text(model: type[BaseModel], text: str | None) -> str:
    """Validate one raw answer against ``model``; return canonical JSON (``model_dump_json(by_alias=True)``).

    Surrounding whitespace, a Markdown code fence and prose around a single JSON object are tolerated.
    Raises :class:`~polars_llm.exceptions.OutputValidationError` (raw text in ``.body``) when the answer is
    empty, is not JSON or does not validate.

    >>> import datetime
    >>> from pydantic import BaseModel
    >>> class Event(BaseModel):
    ...     name: str
    ...     day: datetime.date
    >>> validate_text(Event, '```json\\n{"name": "launch", "day": "2024-05-01"}\\n```')
    '{"name":"launch","day":"2024-05-01"}'
    >>> try:
    ...     validate_text(Event, '{"name": "launch"}')
    ... except OutputValidationError as err:
    ...     print(err.message, "|", err.body)
    output does not match Event (1 validation error): day: Field required | {"name": "launch"}
    """
    model = check_model(model)
    if text is None or not text.strip():
        raise OutputValidationError(f"output for {model.__name__} is empty", body=text)
    first: ValidationError | None = None
    for candidate in _candidates(text):
        try:
            return model.model_validate_json(candidate).model_dump_json(by_alias=True)
        except ValidationError as exc:  # report the first candidate that was JSON, else the answer's error
            first = first or exc
            if not any(e["type"] == "json_invalid" for e in exc.errors(include_url=False)):
                first = exc
                break
    assert first is not None
    raise OutputValidationError(_summary(model, first), body=text) from None
