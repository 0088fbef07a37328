"""The result column of a ``response_model``: its Polars dtype (:func:`struct_dtype`) and the validated
answers decoded into it (:func:`to_series`).

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
import types
import typing
from collections import abc
from collections.abc import Sequence
from typing import Any, Final, Literal, TypeAlias

import orjson
import polars as pl
import typing_extensions
from pydantic import AwareDatetime, BaseModel, RootModel, TypeAdapter

from .._config import check_model
from ..exceptions import OutputValidationError

__all__ = ["struct_dtype", "to_series"]


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
