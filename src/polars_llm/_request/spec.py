"""One description of a call's requests, built once from its :class:`~polars_llm.MapConfig`.

A :class:`RequestSpec` holds everything about the requests of a call except each row's prompt: the
fingerprint that enters every content key, the JSON body around a prompt, the ``response_format`` sent,
how an answer is validated, and the dtype and conversion of the ``result`` column. The entry points,
the engine and the transports all read it from :func:`request_spec`; nothing else derives these facts.

>>> from polars_llm import MapConfig
>>> spec = request_spec(MapConfig(model="m", api_key="k", system="be brief", cache=None))
>>> spec.body("hi")["messages"]
[{'role': 'system', 'content': 'be brief'}, {'role': 'user', 'content': 'hi'}]
>>> spec.result_dtype
String
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import polars as pl
from pydantic import BaseModel

from .._config import EMBED_ONLY, INCLUDE_DTYPES
from ..exceptions import ConfigError
from . import result_column as _result_column
from . import structured as _structured
from .keys import KeyMaker, fingerprint_template, request_fingerprint

if TYPE_CHECKING:
    from .._config import MapConfig

__all__ = ["RequestSpec", "request_spec"]


class Payload(Protocol):
    """A struct row's request (:class:`~polars_llm._request.inputs.RowRequest`): it builds its own body."""

    def body(self, spec: RequestSpec) -> dict[str, Any]: ...


_SPECS: dict[int, RequestSpec] = {}  # id(cfg) -> its spec, while the config lives
_SPECS_LOCK = threading.Lock()


def request_spec(cfg: MapConfig) -> RequestSpec:
    """What every request of this call shares: built once per config, on first use (it imports the
    pydantic-schema and Polars machinery), and kept while the config lives.

    >>> from polars_llm import MapConfig
    >>> cfg = MapConfig(model="m", api_key="k", cache=None)
    >>> request_spec(cfg) is request_spec(cfg), request_spec(cfg).model
    (True, 'm')
    """
    spec = _SPECS.get(id(cfg))
    if spec is not None:
        return spec
    given = sorted(name for name in EMBED_ONLY if getattr(cfg, name) is not None)
    if given:
        raise ConfigError(f"{', '.join(given)}: option(s) of llm.embed only, not of llm.map")
    spec = RequestSpec.of(cfg)
    with _SPECS_LOCK:
        if id(cfg) not in _SPECS:
            _SPECS[id(cfg)] = spec
            weakref.finalize(cfg, _SPECS.pop, id(cfg), None)
        return _SPECS[id(cfg)]


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """The facts shared by every request of one call (see the module docstring)."""

    endpoint: str
    model: str
    system: str | None
    params: Mapping[str, Any]
    response_model: type[BaseModel] | None
    schema: Mapping[str, Any] | None  # the schema document in the content key (= response_format)
    response_format: Mapping[str, Any] | None  # what is sent; None with a worker
    result_dtype: pl.DataType
    include: tuple[str, ...]  # per-row details beside result and status
    fingerprint: bytes
    _extra: Mapping[str, Any] = field(repr=False)  # body fields after model and messages

    @classmethod
    def of(cls, cfg: MapConfig) -> RequestSpec:
        model = cfg.response_model
        schema = _structured.schema_fingerprint(model) if model is not None else None
        response_format = schema if cfg.worker is None else None
        params = cfg.params()
        extra: dict[str, Any] = {}
        if cfg.temperature is not None:
            extra["temperature"] = cfg.temperature
        if cfg.max_tokens is not None:
            extra["max_tokens"] = cfg.max_tokens
        if response_format is not None:
            extra["response_format"] = response_format
        if cfg.extra_body:
            extra.update(cfg.extra_body)
        name = cfg.model or ""  # a worker needs no model; "" keeps the keys of earlier releases
        return cls(
            endpoint=cfg.endpoint,
            model=name,
            system=cfg.system,
            params=params,
            response_model=model,
            schema=schema,
            response_format=response_format,
            result_dtype=_result_column.struct_dtype(model) if model is not None else pl.String(),
            include=cfg.include,
            fingerprint=request_fingerprint(
                base_url=cfg.endpoint, model=name, system=cfg.system, params=params, schema=schema
            ),
            _extra=extra,
        )

    def key_maker(self) -> KeyMaker:
        return KeyMaker(self.fingerprint)

    def fingerprint_template(self) -> Callable[[str, str | None], bytes]:
        """``(model, system) -> fingerprint`` of requests that differ from this call's by those two only."""
        return fingerprint_template(base_url=self.endpoint, params=self.params, schema=self.schema)

    def key_maker_for(
        self, model: str, system: str | None, extra: Mapping[str, Any] | None = None
    ) -> KeyMaker:
        """Keys of requests that differ from this call's by model, system prompt or ``extra`` (struct rows).

        With this call's own model and system prompt and no ``extra``, the keys are :meth:`key_maker`'s.
        """
        return KeyMaker(
            request_fingerprint(
                base_url=self.endpoint,
                model=model,
                system=system,
                params=self.params,
                schema=self.schema,
                extra=extra,
            )
        )

    @property
    def output_dtype(self) -> pl.Struct:
        """``Struct{result, status}`` of the mapped column, plus the ``include`` details asked for."""
        details = {name: INCLUDE_DTYPES[name] for name in self.include}
        return pl.Struct({"result": self.result_dtype, "status": pl.String(), **details})

    def body(self, prompt: str | Payload) -> dict[str, Any]:
        """The JSON body of one request: a fresh conversation per row, never shared between rows.

        ``prompt`` is a row's prompt text, or a struct row's :class:`~polars_llm._request.inputs.RowRequest`
        (its own system prompt, earlier turns, images and model).
        """
        if type(prompt) is not str:
            return prompt.body(self)
        messages = []
        if self.system is not None:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": prompt})
        return {"model": self.model, "messages": messages, **self._extra}

    def chat_body(self, model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """A body with this call's parameters around ``messages`` (a struct row's own conversation)."""
        return {"model": model, "messages": messages, **self._extra}

    @property
    def validator(self) -> Callable[[str | None], str] | None:
        """Checks one answer against ``response_model`` (canonical JSON out); ``None`` for plain text."""
        model = self.response_model
        if model is None:
            return None
        return lambda text: _structured.validate_text(model, text)

    def results(self, texts: pl.Series) -> pl.Series:
        """The ``result`` column from stored answer texts (a Struct with a response model)."""
        if self.response_model is None:
            return texts
        return _result_column.to_series(self.response_model, texts.name, texts)

    def job_columns(self) -> dict[str, str | None]:
        """The request settings stored beside each job row of the cache."""
        model = self.response_model
        return {
            "base_url": self.endpoint,
            "model": self.model,
            "system": self.system,
            "params": json.dumps(dict(self.params), sort_keys=True, default=str),
            "schema_name": model.__name__ if model is not None else None,
            "schema": json.dumps(self.schema, sort_keys=True) if self.response_format is not None else None,
        }
