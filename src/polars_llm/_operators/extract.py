"""``extract``: named fields out of each row's text, as a Struct column.

``fields`` is a pydantic model (its fields and types, as ``response_model``), or a mapping of field name
→ description (a String field) or → ``(type, description)``. Fields given by a mapping are optional
(``X | None``): null where the text does not give them. Descriptions reach the model in the schema.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Unpack

import polars as pl
from pydantic import BaseModel, Field, create_model

from .._bridge import surfaced
from .._config import check_model, with_options
from .._pipeline import MapOptions
from .._request import struct_dtype
from ..exceptions import ConfigError
from .task import Task, operator_expr, operator_series

__all__ = ["Fields", "extract_series", "extract_task", "fields_model", "llm_extract"]

Fields = type[BaseModel] | Mapping[str, str | tuple[Any, str] | type]
INSTRUCTIONS = (
    "Extract the fields of the answer's schema from the input. Use null for a field the input does not give; "
    "never guess."
)


def fields_model(fields: Any) -> type[BaseModel]:
    """The answer model of ``fields`` (see the module docstring); :class:`ConfigError` for bad input.

    >>> m = fields_model({"city": "the city named", "year": (int, "the year")})
    >>> struct_dtype(m)
    Struct({'city': String, 'year': Int64})
    """
    if isinstance(fields, type) and issubclass(fields, BaseModel):
        return check_model(fields)
    if not isinstance(fields, Mapping) or not fields:
        raise ConfigError(
            "extract: fields must be a pydantic model or a non-empty mapping name -> description "
            f"(or name -> (type, description)); got {fields!r}"
        )
    spec: list[tuple[str, Any, str | None]] = []
    for name, given in fields.items():
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise ConfigError(f"extract: field name {name!r} must be a Python identifier not starting with _")
        if isinstance(given, str):
            spec.append((name, str, given))
        elif isinstance(given, tuple) and len(given) == 2 and isinstance(given[1], str | None):
            spec.append((name, given[0], given[1]))
        elif isinstance(given, type):
            spec.append((name, given, None))
        else:
            raise ConfigError(f"extract: field {name!r} must be a description, a type or (type, description)")
    return _model(tuple(spec))


@functools.lru_cache(maxsize=128)
def _model(spec: tuple[tuple[str, Any, str | None], ...]) -> type[BaseModel]:
    try:
        model = create_model(  # type: ignore[call-overload]
            "Extracted", **{name: (kind | None, Field(None, description=doc)) for name, kind, doc in spec}
        )
        struct_dtype(model)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"extract: the fields do not make a model: {exc}") from None
    return check_model(model)


def extract_task(fields: Fields, *, instructions: str | None = None) -> Task:
    """The :class:`~polars_llm._operators.task.Task` of ``extract``."""
    model = fields_model(fields)
    if instructions is not None and not isinstance(instructions, str):
        raise ConfigError(f"extract: instructions must be a string, got {type(instructions).__name__}")
    text = f"{INSTRUCTIONS}\n{instructions}" if instructions else INSTRUCTIONS
    return Task("extract", model, text, None, struct_dtype(model))


@surfaced
@with_options
def llm_extract(
    expr: pl.Expr | str, fields: Fields, *, instructions: str | None = None, **options: Unpack[MapOptions]
) -> pl.Expr:
    """An expression extracting ``fields`` from each row's text: a Struct (``.struct.unnest()`` gives the
    columns), null where the row failed or was not sent (see :mod:`.task`).

    >>> import polars as pl
    >>> from polars_llm import sim
    >>> df = pl.DataFrame({"note": ["Order 7 from Ann, city: Lyon, total: 42", "no details"]})
    >>> with sim.serve() as url:
    ...     out = df.select(pl.col("note").llm.extract(
    ...         {"city": "the delivery city", "total": (int, "the order total")},
    ...         model="m", base_url=url, api_key="k", cache=None, progress=False)).unnest("note")
    >>> out.row(0)
    ('Lyon', 42)
    """
    return operator_expr(expr, extract_task(fields, instructions=instructions), options)


@surfaced
@with_options
def extract_series(
    series: pl.Series, fields: Fields, *, instructions: str | None = None, **options: Unpack[MapOptions]
) -> pl.Series:
    """:func:`llm_extract` on a Series (eager): the Struct Series."""
    return operator_series(series, extract_task(fields, instructions=instructions), options)
