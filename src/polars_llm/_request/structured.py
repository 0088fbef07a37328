"""Structured output: one pydantic ``response_model`` drives the request (:func:`response_format`), the
check of each answer (:func:`validate_text`) and the result column (:func:`struct_dtype`, :func:`to_series`).

Type mapping (annotation → Polars dtype). ``X | None`` maps like ``X``; every field is nullable.

==========================================================  =============================================
``str``, ``bytes``, ``UUID``, ``timedelta``, URL, e-mail…   ``String`` (as pydantic dumps it: ISO duration…)
``int`` / ``float`` / ``bool``; ``int | float``             ``Int64`` / ``Float64`` / ``Boolean``; ``Float64``
``decimal.Decimal``                                         ``Float64`` (digits beyond a double are lost)
``date`` / ``time``                                         ``Date`` / ``Time``
``datetime``                                                ``Datetime("us")``, aware values in UTC
``pydantic.AwareDatetime``                                  ``Datetime("us", "UTC")``
``Literal["a", "b"]``, ``enum.Enum`` of ``str`` values       ``Enum(["a", "b"])`` (declaration order)
``Literal``/``Enum`` of other values                        the values' dtype (``Int64`` for ``IntEnum``…)
``list[X]``, ``set[X]``, ``tuple[X, ...]``, ``Sequence[X]``  ``List(X)``
nested ``BaseModel``, dataclass, ``TypedDict``              ``Struct``
``dict``, ``Any``, other unions, ``tuple[X, Y]``, recursion  ``String`` holding compact JSON
==========================================================  =============================================

String ``Literal``/``Enum`` labels become ``pl.Enum`` (cheap to group, sort and compare); a changed set
of labels changes the schema, hence the content key, so an old answer is never read into the new Enum.
A union of such labels (``Literal["a"] | Literal["b"]``) is one Enum of all of them. JSON leaves hold
what ``json.loads`` turns back into the value (``null`` stays null); a recursive model's repeated level
is one. Struct field names are the serialisation aliases (``model_dump(by_alias=True)``);
computed fields are included, ``Field(exclude=True)`` fields are not. Integers outside Int64 become null.
"""

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import functools
import json
import operator
import re
import types
import typing
from collections import abc
from collections.abc import Iterator, Sequence
from typing import Any, Final, Literal, TypeAlias

import orjson
import polars as pl
import typing_extensions
from pydantic import AwareDatetime, BaseModel, RootModel, TypeAdapter, ValidationError

from ..exceptions import ConfigError, OutputValidationError

__all__ = [
    "check_model",
    "response_format",
    "schema_fingerprint",
    "struct_dtype",
    "to_series",
    "validate_text",
]

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


def check_model(model: Any) -> type[BaseModel]:
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise ConfigError(f"response_model must be a pydantic BaseModel subclass, got {model!r}")
    if issubclass(model, RootModel):
        raise ConfigError(f"response_model must have named fields; {model.__name__} is a RootModel")
    if not model.__pydantic_complete__:
        try:
            model.model_rebuild()
        except Exception as exc:
            raise ConfigError(f"response_model {model.__name__} is not fully defined: {exc}") from exc
    return model


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


# --- struct_dtype ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ListOf:
    item: "_Fix"


# Where JSON leaves sit: _JSON (stored as JSON text), _ListOf(item fix), {field: fix} for a struct.
_JSON: Final = "json"
_Fix: TypeAlias = str | _ListOf | dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class _Typed:
    dtype: pl.DataType  # final dtype
    wire: pl.DataType  # what ``json_decode`` reads (String where a cast follows, e.g. Decimal)
    fix: _Fix = None  # Python pre-processing needed before ``json_decode``


_JSON_LEAF: Final = _Typed(pl.String(), pl.String(), _JSON)
_SCALARS: Final[dict[Any, pl.DataType]] = {
    bool: pl.Boolean(), int: pl.Int64(), float: pl.Float64(), str: pl.String(), dt.date: pl.Date(),
    dt.time: pl.Time(), dt.datetime: pl.Datetime("us"), AwareDatetime: pl.Datetime("us", "UTC"),
}  # fmt: skip
_LISTS: Final = (list, tuple, set, frozenset, collections.deque, abc.Sequence, abc.MutableSequence, abc.Set,
                 abc.MutableSet, abc.Collection)  # fmt: skip
_SCHEMA_TYPES: Final[dict[str, pl.DataType]] = {
    "date-time": pl.Datetime("us"), "date": pl.Date(), "time": pl.Time(), "string": pl.String(),
    "integer": pl.Int64(), "number": pl.Float64(), "boolean": pl.Boolean(),
}  # fmt: skip


def _values_type(values: Sequence[Any]) -> _Typed:
    """Dtype for Literal / Enum values (str → pl.Enum of them, int → Int64, …; mixed → JSON)."""
    values = [v.value if isinstance(v, enum.Enum) else v for v in values if v is not None]
    kinds = {type(v) for v in values}
    if len(kinds) == 1 and (kind := kinds.pop()) in (bool, int, float, str):
        if kind is str:  # decoded as String, then cast to the Enum (validation already checked the label)
            return _Typed(pl.Enum(list(dict.fromkeys(values))), pl.String())
        return _Typed(_SCALARS[kind], _SCALARS[kind])
    return _JSON_LEAF


def _struct(fields: list[tuple[str, Any]], stack: tuple[type, ...]) -> _Typed:
    typed = {name: _typed(ann, stack) for name, ann in fields}
    fix = {name: t.fix for name, t in typed.items() if t.fix is not None} or None
    dtype, wire = (pl.Struct({name: getattr(t, k) for name, t in typed.items()}) for k in ("dtype", "wire"))
    return _Typed(dtype, wire, fix)


def _model_fields(model: type[BaseModel]) -> list[tuple[str, Any]]:
    out = [
        (f.serialization_alias or f.alias or name, f.annotation)
        for name, f in model.model_fields.items()
        if f.exclude is not True
    ]
    out += [(c.alias or name, c.return_type) for name, c in model.model_computed_fields.items()]
    return out


def _typed(ann: Any, stack: tuple[type, ...]) -> _Typed:
    while True:  # peel Annotated, NewType, ``type X = ...`` aliases
        if typing.get_origin(ann) is typing.Annotated:
            ann = typing.get_args(ann)[0]
        elif isinstance(ann, typing.NewType):
            ann = ann.__supertype__
        elif isinstance(ann, typing_extensions.TypeAliasType):
            ann = ann.__value__
        else:
            break
    try:
        scalar = _SCALARS.get(ann)
    except TypeError:  # unhashable annotation object
        scalar = None
    if scalar is not None:
        return _Typed(scalar, scalar)
    if ann is decimal.Decimal:  # pydantic dumps Decimal as a JSON string: read text, cast
        return _Typed(pl.Float64(), pl.String())
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is Literal:
        return _values_type(args)
    if origin in (typing.Union, types.UnionType):
        arms = [_typed(a, stack) for a in args if a is not type(None)]
        if len(arms) == 1 or (arms and all(a == arms[0] for a in arms)):
            return arms[0]
        if arms and all(isinstance(a.dtype, pl.Enum) for a in arms):  # Literal["a"] | Literal["b"]
            labels = [c for a in arms for c in a.dtype.categories.to_list()]  # type: ignore[attr-defined]
            return _Typed(pl.Enum(list(dict.fromkeys(labels))), pl.String())
        if arms and {type(a.dtype) for a in arms} == {pl.Int64, pl.Float64} and not any(a.fix for a in arms):
            return _Typed(pl.Float64(), pl.Float64())
        return _JSON_LEAF
    if origin in _LISTS or ann in _LISTS:
        fixed = origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)  # tuple[X, Y]
        inner = [_typed(a, stack) for a in (args if fixed else args[:1])] or [_JSON_LEAF]
        if any(t != inner[0] for t in inner):
            return _JSON_LEAF
        item = inner[0]
        return _Typed(pl.List(item.dtype), pl.List(item.wire), _ListOf(item.fix) if item.fix else None)
    if isinstance(ann, type) and ann in stack:  # recursive model: no recursive dtypes in Polars
        return _JSON_LEAF
    if isinstance(ann, type) and issubclass(ann, BaseModel) and not issubclass(ann, RootModel):
        return _struct(_model_fields(ann), (*stack, ann))
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return _values_type(list(ann))
    if isinstance(ann, type) and (dataclasses.is_dataclass(ann) or typing_extensions.is_typeddict(ann)):
        try:
            return _struct(list(typing.get_type_hints(ann).items()), (*stack, ann))
        except Exception:
            return _JSON_LEAF
    return _from_schema(ann)


def _from_schema(ann: Any) -> _Typed:
    """Any other type (UUID, URL, timedelta, bytes, Any, dict…): ask pydantic how it dumps it."""
    try:
        schema = TypeAdapter(ann).json_schema(mode="serialization")
    except Exception:
        return _JSON_LEAF
    kind = schema.get("format") if schema.get("format") in _SCHEMA_TYPES else schema.get("type")
    dtype = _SCHEMA_TYPES.get(kind) if isinstance(kind, str) else None
    return _Typed(dtype, dtype) if dtype is not None else _JSON_LEAF


@functools.lru_cache(maxsize=256)
def _plan(model: type[BaseModel]) -> _Typed:
    return _struct(_model_fields(model), (model,))


def struct_dtype(model: type[BaseModel]) -> pl.Struct:
    """The Polars ``Struct`` of ``model`` answers, from the annotations alone (mapping: module docstring).

    >>> import datetime
    >>> from typing import Literal
    >>> from pydantic import BaseModel
    >>> class Review(BaseModel):
    ...     stars: int
    ...     label: Literal["good", "bad"]
    ...     tags: list[str]
    ...     seen: datetime.date | None = None
    >>> struct_dtype(Review)
    Struct({'stars': Int64, 'label': Enum(categories=['good', 'bad']), 'tags': List(String), 'seen': Date})
    """
    return typing.cast(pl.Struct, _plan(check_model(model)).dtype)


# --- to_series ---------------------------------------------------------------------------------------


class _Inexact(Exception):
    """orjson read an integer beyond 64 bits as a float (it then dumps it with ``e+``)."""


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers beyond 64 bits
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _apply(value: Any, fix: _Fix, exact: bool) -> Any:
    if value is None:
        return None
    if fix == _JSON:
        dumped = _dumps(value)
        if not exact and "e+" in dumped:
            raise _Inexact
        return dumped
    if isinstance(fix, _ListOf):
        return [_apply(v, fix.item, exact) for v in value] if isinstance(value, list) else value
    if isinstance(fix, dict) and isinstance(value, dict):
        for key, sub in fix.items():
            if key in value:
                value[key] = _apply(value[key], sub, exact)
    return value


def _prepare(texts: list[str | None], fix: _Fix) -> tuple[list[str | None], list[tuple[int, Exception]]]:
    """Turn JSON leaves into JSON strings so ``json_decode`` reads them as ``String``; bad rows → None."""
    out: list[str | None] = []
    bad: list[tuple[int, Exception]] = []
    append = out.append
    for i, text in enumerate(texts):
        if text is None:
            append(None)
            continue
        try:
            try:
                doc = _apply(orjson.loads(text), fix, False)
            except _Inexact:
                doc = _apply(json.loads(text), fix, True)
            append(_dumps(doc))
        except (ValueError, TypeError) as exc:
            bad.append((i, exc))
            append(None)
    return out, bad


def _decode(s: pl.Series, plan: _Typed) -> pl.Series:
    out = s.str.json_decode(plan.wire)
    return out if plan.wire == plan.dtype else out.cast(plan.dtype)


def _decode_lenient(s: pl.Series, plan: _Typed, offset: int, bad: list[int]) -> pl.Series:
    """Decode; on error split in halves until the bad rows are found (they become null)."""
    try:
        return _decode(s, plan)
    except pl.exceptions.PolarsError:
        if len(s) == 1:
            bad.append(offset)
            return pl.Series(s.name, [None], dtype=plan.dtype)
        mid = len(s) // 2
        head = _decode_lenient(s.slice(0, mid), plan, offset, bad)
        return head.append(_decode_lenient(s.slice(mid), plan, offset + mid, bad))


def to_series(
    model: type[BaseModel],
    name: str,
    texts: Sequence[str | None] | pl.Series,
    *,
    strict: bool = True,
) -> pl.Series:
    """A Series of :func:`struct_dtype` ``(model)`` from canonical JSON texts (``None`` → null).

    Decoding is vectorised (``json_decode``); only models with JSON leaves (``dict``, ``Any``…) take a
    Python (orjson) pass first. A text that cannot be converted raises
    :class:`~polars_llm.exceptions.OutputValidationError` naming the row, or is null if ``strict=False``.

    >>> import datetime
    >>> from pydantic import BaseModel
    >>> class Event(BaseModel):
    ...     name: str
    ...     day: datetime.date
    >>> s = to_series(Event, "event", ['{"name":"launch","day":"2024-05-01"}', None])
    >>> s.dtype, s.to_list()
    (Struct({'name': String, 'day': Date}), [{'name': 'launch', 'day': datetime.date(2024, 5, 1)}, None])
    """
    plan = _plan(check_model(model))
    raw = texts.cast(pl.String) if isinstance(texts, pl.Series) else pl.Series(name, texts, dtype=pl.String)
    s, bad = raw, []
    if plan.fix is not None:
        prepared, bad = _prepare(raw.to_list(), plan.fix)
        s = pl.Series(name, prepared, dtype=pl.String)
    error: Exception | None = bad[0][1] if bad and strict else None
    if error is None:
        try:
            return _decode(s, plan).rename(name)
        except pl.exceptions.PolarsError as exc:
            if not strict:
                return _decode_lenient(s, plan, 0, []).rename(name)
            error = exc
    found = [bad[0][0]] if bad else []
    if not found:
        _decode_lenient(s, plan, 0, found)
    row = found[0] if found else 0
    reason = (str(error).strip() or type(error).__name__).splitlines()[0]
    message = f"row {row} cannot be converted to a {model.__name__} struct: {reason}"
    raise OutputValidationError(message, body=raw[row] if len(raw) else None) from error
