"""Embeddings: ``POST {base_url}/embeddings`` with many texts per request, on the engine of ``llm.map``.

The same pipeline as chat (:mod:`polars_llm._pipeline.pipeline`): unique non-null texts, content keys (a
fingerprint of their own, so never a chat key), the DuckDB store (vectors in ``requests.embedding``,
``FLOAT[]``), resume, the shared pacing (``Run.pace``: limits, learned rate), retries (``Run.recover``), the
batched writer and the progress bar. What differs is the pool (:func:`run_pool`): each worker takes up
to ``batch_size`` jobs at a time and sends them as one request.

* A request answered 400 (or another row error) while holding several texts is split in halves, each
  sent again, until the bad text is alone and fails by itself: its batch-mates are not failed with it.
* A request's ``usage`` is shared out among its texts in proportion to their length in characters
  (tokens by largest remainder, so they add up to the request's; cost likewise).
* ``result`` is ``Array(Float32, dimensions)`` when ``dimensions`` is given, else ``List(Float32)``: known
  before any request. A vector of another length than ``dimensions`` fails its row.

>>> from polars_llm import MapConfig
>>> spec = EmbedSpec.of(MapConfig(model="m", api_key="k", cache=None, dimensions=8))
>>> spec.body(["a", "b"])
{'model': 'm', 'input': ['a', 'b'], 'encoding_format': 'float', 'dimensions': 8}
>>> spec.result_dtype
Array(Float32, shape=(8,))
"""

from __future__ import annotations

import array
import base64
import dataclasses
import io
import itertools
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
import polars as pl
import pyarrow as pa

from .. import exceptions as exc
from .._bridge import offload
from .._config import CHAT_ONLY, INCLUDE_DTYPES, MapConfig, option_fields
from .._cost import Budget, Costing
from .._engine import FAIL, STOP, Run, Sink, Work, run_groups, share
from .._progress import RunStats
from .._request import KeyMaker, request_fingerprint
from .._store import Outcome, Store
from .._transport import OpenAITransport, error_for_status
from ..exceptions import ColumnTypeError, ConfigError
from .pipeline import assemble, run
from .prepared import Prepared

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "EmbedSpec",
    "assemble_vectors",
    "check_options",
    "decode",
    "embed_series",
    "prepare_texts",
    "run_pool",
]

DEFAULT_BATCH_SIZE: Final = 2048  # OpenAI's limit of inputs per request
_VECTOR: Final = pa.list_(pa.float32())


def check_options(options: Mapping[str, Any]) -> None:
    """Refuse ``llm.map``-only options given to ``llm.embed`` (:class:`ConfigError`, before any request):
    any of them set to something other than its default."""
    defaults = {f.name: f.default for f in option_fields()}
    given = sorted(name for name in CHAT_ONLY.intersection(options) if options[name] != defaults[name])
    if given:
        raise ConfigError(f"{', '.join(given)}: option(s) of llm.map only, not of llm.embed")


@dataclass(frozen=True, slots=True)
class EmbedSpec:
    """What every ``/embeddings`` request of one call shares (the embeddings twin of ``RequestSpec``)."""

    endpoint: str
    model: str
    dimensions: int | None
    batch_size: int
    params: Mapping[str, Any]
    fingerprint: bytes
    _extra: Mapping[str, Any] = field(repr=False)
    include: tuple[str, ...] = ()  # per-row details beside result/status (not part of the key)

    @classmethod
    def of(cls, cfg: MapConfig) -> EmbedSpec:
        check_options({name: getattr(cfg, name) for name in CHAT_ONLY - {"temperature"}})
        if cfg.model is None:
            raise ConfigError("no model given: pass model='provider/name' or set MODEL in the environment")
        params: dict[str, Any] = {}
        if cfg.dimensions is not None:
            params["dimensions"] = cfg.dimensions
        if cfg.extra_body:
            params["extra_body"] = dict(cfg.extra_body)
        return cls(
            include=cfg.include,
            endpoint=cfg.url,
            model=cfg.model,
            dimensions=cfg.dimensions,
            batch_size=cfg.batch_size or DEFAULT_BATCH_SIZE,
            params=params,
            fingerprint=request_fingerprint(
                base_url=cfg.url,
                model=cfg.model,
                system=None,
                params=params,
                schema=None,
                extra={"kind": "embedding"},
            ),
            _extra=dict(cfg.extra_body or {}),
        )

    @property
    def result_dtype(self) -> pl.DataType:
        return pl.List(pl.Float32) if self.dimensions is None else pl.Array(pl.Float32, self.dimensions)

    @property
    def output_dtype(self) -> pl.Struct:
        """``Struct{result, status}``, ``result`` a vector column, plus the ``include`` details asked for."""
        details = {name: INCLUDE_DTYPES[name] for name in self.include}
        return pl.Struct({"result": self.result_dtype, "status": pl.String(), **details})

    def key_maker(self) -> KeyMaker:
        return KeyMaker(self.fingerprint)

    def body(self, texts: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": "float"}
        if self.dimensions is not None:
            out["dimensions"] = self.dimensions
        out.update(self._extra)
        return out

    def job_columns(self) -> dict[str, str | None]:
        params = {"kind": "embedding", **self.params}
        return {
            "base_url": self.endpoint,
            "model": self.model,
            "system": None,
            "params": json.dumps(params, sort_keys=True, default=str),
            "schema_name": None,
            "schema": None,
        }

    def results(self, vectors: pl.Series) -> pl.Series:
        return vectors.cast(self.result_dtype)


# --- the pipeline's ends -----------------------------------------------------------------------------


def prepare_texts(series: pl.Series, cfg: MapConfig, spec: EmbedSpec) -> Prepared:
    """Unique non-null texts in first-seen order with their (embedding) keys; the pool that sends them."""
    dtype = series.dtype
    if not (dtype in (pl.String, pl.Null, pl.Categorical) or isinstance(dtype, pl.Enum)):
        raise ColumnTypeError(
            f"the text column {series.name!r} has dtype {dtype}; llm.embed needs a String column"
        )
    rows = series.cast(pl.String)
    unique = rows.drop_nulls().unique(maintain_order=True).rename("prompt")
    keys = pl.Series("key", spec.key_maker().keys(unique.to_list()), dtype=pl.String)

    async def pool(
        cfg: MapConfig,
        store: Store,
        keys: pl.Series,
        texts: Any,
        stats: RunStats,
        costing: Costing,
        budget: Budget | None,
    ) -> None:
        await run_pool(cfg, spec, store, keys, texts, stats, costing, budget)

    work = Work(columns=spec.job_columns(), pool=pool, vectors=True)
    return Prepared(rows, unique, keys, work=work)


def assemble_vectors(prepared: Prepared, state: pl.DataFrame, cfg: MapConfig, spec: EmbedSpec) -> pl.Series:
    """The ``Struct{result, status}`` column of vectors (the chat ``assemble`` with a vector result)."""
    return assemble(prepared, state.rename({"embedding": "result"}), cfg, results=spec.results)


def embed_series(series: pl.Series, cfg: MapConfig) -> pl.Series:
    """Embed a text Series synchronously: the ``Struct{result, status}`` Series of vectors."""
    spec = EmbedSpec.of(cfg)
    prepared = prepare_texts(series, cfg, spec)
    return assemble_vectors(prepared, run(prepared, cfg), cfg, spec)


# --- one response --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded ``/embeddings`` answer: one vector per input, in input order."""

    vectors: pa.ListArray
    tokens: int | None
    cost: float | None
    errors: Mapping[int, str]  # input index → why its vector is unusable (that row fails)

    def priced(self, cost: float | None) -> Reply:
        """This answer with ``cost`` (the provider reported none; tokens × a known price)."""
        return dataclasses.replace(self, cost=cost)


def _values(item: Any) -> Any:
    vector = item.get("embedding") if isinstance(item, dict) else None
    if isinstance(vector, str):  # encoding_format=base64: little-endian float32
        out = array.array("f")
        out.frombytes(base64.b64decode(vector))
        return out
    return vector


_WIRE: Final = {
    "data": pl.List(pl.Struct({"index": pl.Int64, "embedding": pl.List(pl.Float32)})),
    "usage": pl.Struct({"prompt_tokens": pl.Int64, "total_tokens": pl.Int64, "cost": pl.Float64}),
}


def _fast(raw: bytes, n: int) -> tuple[pl.Series, int | None, float | None] | None:
    """The usual answer read straight into Arrow by Polars (no Python float per value; twice as fast as
    orjson, and off the GIL); ``None`` for anything unusual, which :func:`decode` then reads with orjson."""
    try:
        frame = pl.read_json(io.BytesIO(raw), schema=_WIRE)
    except Exception:  # not JSON, base64 vectors, an error object…: the careful path says what it is
        return None
    data = frame.get_column("data")
    if len(frame) != 1 or data.null_count() or data.list.len().item() != n:
        return None
    items = data.explode().struct.unnest()
    index, vectors = items.get_column("index"), items.get_column("embedding")
    if (
        index.null_count()
        or vectors.null_count()
        or not index.sort().equals(pl.Series(range(n)), check_names=False)
    ):
        return None
    if not index.is_sorted():
        vectors = vectors.gather(index.arg_sort())
    usage = frame.get_column("usage").item() or {}
    tokens = usage.get("prompt_tokens")
    return vectors, tokens if tokens is not None else usage.get("total_tokens"), usage.get("cost")


def decode(raw: bytes, n: int, dimensions: int | None) -> Reply:
    """Decode a 200 body holding ``n`` vectors; a malformed one raises a (retried) ``MalformedResponseError``.

    >>> r = decode(b'{"data": [{"index": 1, "embedding": [3, 4]}, {"index": 0, "embedding": [1, 2]}],'
    ...            b' "usage": {"prompt_tokens": 6}}', 2, 2)
    >>> r.vectors.to_pylist(), r.tokens
    ([[1.0, 2.0], [3.0, 4.0]], 6)
    """

    fast = _fast(raw, n)
    if fast is not None:
        vectors, tokens, cost = fast
        wrong: dict[int, str] = {}
        if dimensions is not None:
            sizes = vectors.list.len()
            for i in (sizes != dimensions).arg_true().to_list():
                wrong[i] = f"the provider returned {sizes[i]} values; dimensions={dimensions} was asked"
        arrow = vectors.rechunk().to_arrow().cast(_VECTOR)
        return Reply(vectors=arrow, tokens=tokens, cost=cost, errors=wrong)

    def text() -> str:  # the body for an error message (decoded only then: answers are megabytes)
        return raw[:4000].decode("utf-8", "replace")

    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise exc.MalformedResponseError("response body is not valid JSON", status=200, body=text()) from None
    if not isinstance(data, dict):
        raise exc.MalformedResponseError("response body is not a JSON object", status=200, body=text())
    if data.get("error"):
        err = data["error"]
        code = err.get("code") if isinstance(err, dict) else None
        raise error_for_status(code if isinstance(code, int) and 400 <= code < 600 else 502, {}, text())
    items = data.get("data")
    if not isinstance(items, list) or len(items) != n:
        got = len(items) if isinstance(items, list) else "no"
        raise exc.MalformedResponseError(f"expected {n} embeddings, got {got}", status=200, body=text())
    ordered: list[Any] = [None] * n
    for item in items:
        index = item.get("index") if isinstance(item, dict) else None
        if not isinstance(index, int) or not 0 <= index < n or ordered[index] is not None:
            raise exc.MalformedResponseError("embeddings with missing or repeated indexes", body=text())
        ordered[index] = _values(item)
    if not all(isinstance(v, list | array.array) for v in ordered):
        raise exc.MalformedResponseError("an embedding is missing or not a list of numbers", body=text())
    lengths = [len(v) for v in ordered]
    errors: dict[int, str] = {}
    if dimensions is not None:
        for i, length in enumerate(lengths):
            if length != dimensions:
                errors[i] = f"the provider returned {length} values; dimensions={dimensions} was asked"
    try:
        flat = array.array("f", itertools.chain.from_iterable(v for v in ordered if v is not None))
    except TypeError:
        raise exc.MalformedResponseError(
            "an embedding holds something other than numbers", body=text()
        ) from None
    bounds = array.array("i", itertools.accumulate(lengths, initial=0))  # (no pa.array: see _store)
    offsets = pa.Array.from_buffers(pa.int32(), len(bounds), [None, pa.py_buffer(bounds)])
    values = pa.Array.from_buffers(pa.float32(), len(flat), [None, pa.py_buffer(flat)])
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    tokens = usage.get("prompt_tokens", usage.get("total_tokens"))
    cost = usage.get("cost")
    return Reply(
        vectors=pa.ListArray.from_arrays(offsets, values),
        tokens=tokens if isinstance(tokens, int) else None,
        cost=float(cost) if isinstance(cost, int | float) else None,
        errors=errors,
    )


# --- the pool ------------------------------------------------------------------------------------------


async def _post(transport: Any, body: dict[str, Any]) -> bytes:
    if isinstance(transport, OpenAITransport):
        return await transport.embeddings(body)
    return await transport.post("/embeddings", orjson.dumps(body))


class _Batch:
    """Sends one group of jobs as one request, splitting it on a row error (see the module docstring)."""

    def __init__(self, run: Run, spec: EmbedSpec, sink: Sink) -> None:
        self.run, self.spec, self.sink = run, spec, sink

    async def send(self, jobs: list[tuple[str, str]]) -> bool:
        """Send ``jobs``; ``False`` when the run is stopping."""
        run, stats = self.run, self.run.stats
        texts = [text for _, text in jobs]
        chars = sum(map(len, texts))
        estimate = chars / 4
        budget = run.budget
        attempts = 0
        while True:
            attempts += 1
            reserved = run.costing.inputs_worst(chars, len(texts)) if budget is not None else 0.0
            if budget is not None and not await budget.reserve(reserved):
                return False  # max_cost reached: these rows stay pending
            cost: float | None = 0.0
            error: exc.APIError
            ticket = None
            try:
                ticket = await run.pace(estimate)
                async with run.slot():
                    stats.in_flight += 1
                    stats.requests += 1
                    try:
                        raw = await _post(run.transport, self.spec.body(texts))
                        # off the event loop: answers are megabytes, and Polars parses them without the GIL
                        reply = await offload(decode, raw, len(texts), self.spec.dimensions)
                    except exc.APIError as e:
                        error = e
                    else:
                        run.succeeded(ticket)
                        run.release(ticket)
                        if reply.cost is None and reply.tokens is not None:
                            reply = reply.priced(run.costing.price.cost(reply.tokens, 0))
                        cost = reply.cost
                        self._done(jobs, texts, reply, attempts)
                        return True
                    finally:
                        stats.in_flight -= 1
            finally:
                if budget is not None:
                    budget.settle(reserved, cost)
            if isinstance(error, exc.RowError) and len(jobs) > 1:  # find the bad text, keep the others
                run.release(ticket)
                half = len(jobs) // 2
                return await self.send(jobs[:half]) and await self.send(jobs[half:])
            error.attempts = attempts
            verdict = await run.recover(error, attempts, ticket)
            if verdict is STOP:
                return False
            if verdict is FAIL:
                now = time.time()
                message, kind = str(error), error.kind
                for key, _ in jobs:
                    self.sink.put(Outcome(key, "failed", attempts, now, error=message, error_kind=kind))
                stats.failed += len(jobs)
                return True

    def _done(self, jobs: list[tuple[str, str]], texts: list[str], reply: Reply, attempts: int) -> None:
        stats, put, now = self.run.stats, self.sink.put, time.time()
        lengths = [len(t) for t in texts]
        tokens = share(reply.tokens, lengths) if reply.tokens is not None else [0] * len(jobs)
        whole = sum(lengths) or 1
        for i, (key, _) in enumerate(jobs):
            cost = reply.cost * lengths[i] / whole if reply.cost else None
            problem = reply.errors.get(i)
            put(
                Outcome(
                    key,
                    "done" if problem is None else "failed",
                    attempts,
                    now,
                    error=problem,
                    error_kind=None if problem is None else "malformed_response",
                    tokens_in=tokens[i] or None,
                    cost=cost,
                    embedding=reply.vectors.slice(i, 1) if problem is None else None,
                )
            )
        stats.failed += len(reply.errors)
        stats.done += len(jobs) - len(reply.errors)
        stats.tokens_in += reply.tokens or 0
        stats.cost += reply.cost or 0.0


async def run_pool(
    cfg: MapConfig,
    spec: EmbedSpec,
    store: Store,
    keys: pl.Series,
    texts: Any,
    stats: RunStats,
    costing: Costing,
    budget: Budget | None = None,
) -> None:
    """Send every (key, text) in groups of ``batch_size`` from ``concurrency`` workers; one batched writer."""
    run_cfg = cfg.replace(dimensions=None, batch_size=None)  # the chat-shaped parts Run and transports read
    await run_groups(
        run_cfg,
        store,
        keys,
        texts,
        stats,
        costing,
        budget,
        size=spec.batch_size,
        sender=lambda run, sink: _Batch(run, spec, sink),
    )
