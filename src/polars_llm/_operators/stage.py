"""One stage of a set operator: a set of prompts (or texts to embed) as one engine run.

A stage is a whole ``llm.map`` (or ``llm.embed``) run: unique prompts sent once, concurrently, paced,
retried, cached by content; its progress bar is labelled with the stage (``reduce: level 2``). An operator
runs a few stages in sequence and shares one ``max_cost`` between them (:class:`Spend`): each stage gets
what the earlier ones left, counting what earlier calls already paid for its rows, as ``llm.map`` does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from .._config import MapConfig
from .._cost import Estimate, TokenModel, build_estimate, resolve_price
from .._engine import pack_size
from .._pipeline import (
    EmbedSpec,
    assemble,
    assemble_vectors,
    estimate_series,
    packed_requests,
    prepare,
    prepare_texts,
    run,
)
from .._progress import Progress, RunStats
from .._request import request_spec
from .._store import Store
from ..exceptions import ConfigError

__all__ = [
    "Spend",
    "embed_config",
    "embed_stage",
    "estimate_projected",
    "estimate_texts",
    "map_stage",
    "stage_mapper",
    "stage_series",
]


@dataclass
class Spend:
    """One ``max_cost`` shared by the stages of an operator call (``None``: no limit)."""

    limit: float | None
    spent: float = 0.0
    requests: int = 0
    stages: list[str] = field(default_factory=list)

    def config(self, cfg: MapConfig) -> MapConfig:
        if self.limit is None:
            return cfg
        return cfg.replace(max_cost=max(self.limit - self.spent, 1e-12))

    def add(self, label: str, stats: RunStats) -> None:
        self.spent += stats.spent_before + stats.cost
        self.requests += stats.requests
        self.stages.append(label)


def map_stage(prompts: pl.Series, cfg: MapConfig, label: str, spend: Spend) -> pl.DataFrame:
    """Answer ``prompts`` (String, nulls kept) as one run: a frame of ``result`` and ``status`` per row."""
    return stage_series(prompts, cfg, label, spend).struct.unnest()


def stage_series(prompts: pl.Series, cfg: MapConfig, label: str, spend: Spend) -> pl.Series:
    """:func:`map_stage` as ``llm.map``'s ``Struct{result, status, …}`` Series: a drop-in for
    ``map_series`` where a row operator's machinery runs as a stage (``stage_mapper``)."""
    stage_cfg = spend.config(cfg)
    prepared = prepare(prompts, stage_cfg)
    reporter = Progress(RunStats(total=len(prepared)), enabled=cfg.progress and len(prepared) > 0, desc=label)
    try:
        state = run(prepared, stage_cfg, reporter)
    finally:
        spend.add(label, reporter.stats)
    return assemble(prepared, state, stage_cfg)


def stage_mapper(label: str, spend: Spend) -> Callable[[pl.Series, MapConfig], pl.Series]:
    """A ``map_series`` that runs as the stage ``label`` of an operator sharing ``spend``."""
    return functools.partial(_staged, label=label, spend=spend)


def _staged(prompts: pl.Series, cfg: MapConfig, *, label: str, spend: Spend) -> pl.Series:
    return stage_series(prompts, cfg, label, spend)


def embed_config(cfg: MapConfig, model: str | None, dimensions: int | None) -> MapConfig:
    """The ``llm.embed`` settings of an operator's blocking stage: ``model`` (else the chat model)."""
    model = model or cfg.model
    if model is None:
        raise ConfigError("no embedding model: pass embed_model='provider/name'")
    return cfg.replace(
        model=model, dimensions=dimensions, response_model=None, system=None, temperature=0.0,
        max_tokens=None, include=(), worker=None, pack=1,
    )  # fmt: skip


def embed_stage(texts: pl.Series, cfg: MapConfig, label: str, spend: Spend) -> pl.Series:
    """The vectors of ``texts`` (one ``llm.embed`` run; ``cfg`` from :func:`embed_config`): a List/Array
    Float32 Series, null where a text is null or its embedding failed."""
    stage_cfg = spend.config(cfg)
    spec = EmbedSpec.of(stage_cfg)
    prepared = prepare_texts(texts, stage_cfg, spec)
    reporter = Progress(RunStats(total=len(prepared)), enabled=cfg.progress and len(prepared) > 0, desc=label)
    try:
        state = run(prepared, stage_cfg, reporter)
    finally:
        spend.add(label, reporter.stats)
    out = assemble_vectors(prepared, state, stage_cfg, spec).struct.unnest()
    return out.get_column("result")


def estimate_texts(texts: pl.Series, cfg: MapConfig) -> Estimate:
    """What embedding ``texts`` (``cfg`` from :func:`embed_config`) would send and cost."""
    spec = EmbedSpec.of(cfg)
    prepared = prepare_texts(texts, cfg, spec)
    with Store.open(cfg.cache_path) as store:
        known = store.lookup(prepared.keys.to_frame())
        price = resolve_price(cfg, store)
        history = store.token_history(spec.model)
    done = known.filter(pl.col("status") == "done").get_column("key")
    to_send = prepared.unique.filter(~prepared.keys.is_in(done.implode()))
    tokens = TokenModel.learn(history, max_tokens=None, max_output=0)
    return build_estimate(
        model=spec.model, rows=len(prepared.rows), null_rows=prepared.rows.null_count(),
        unique_prompts=len(prepared), to_send_chars=to_send.str.len_chars(),
        cached=len(prepared) - len(to_send), tokens=tokens, price=price, system_chars=0,
    )  # fmt: skip


def estimate_projected(chars: pl.Series, cfg: MapConfig) -> Estimate:
    """The estimate of requests not known yet (upper levels, later rounds, pairs of vectors not computed
    yet): one row per entry of ``chars`` (their expected prompt lengths), none assumed cached, sent
    ``cfg.pack`` rows per request.

    >>> from pydantic import create_model
    >>> cfg = MapConfig(model="m", api_key="k", cache=None, response_model=create_model("A", a=(int, ...)))
    >>> chars = pl.Series([100] * 40)
    >>> estimate_projected(chars, cfg).to_send, estimate_projected(chars, cfg.replace(pack=10)).to_send
    (40, 4)
    """
    with Store.open(cfg.cache_path) as store:
        price = resolve_price(cfg, store)
        history = store.token_history(request_spec(cfg).model)
    tokens = TokenModel.learn(history, max_tokens=cfg.max_tokens, max_output=price.max_output)
    size = pack_size(cfg, chars) if cfg.pack != 1 else 1
    sent, system_chars, tokens = packed_requests(cfg, chars, tokens, size)
    return build_estimate(
        model=request_spec(cfg).model, rows=len(chars), null_rows=0, unique_prompts=len(chars),
        to_send_chars=sent, cached=0, tokens=tokens, price=price, system_chars=system_chars,
    )  # fmt: skip


def estimate_prompts(prompts: pl.Series, cfg: MapConfig) -> Estimate:
    """What answering ``prompts`` would send and cost (``llm.map``'s estimate; cached prompts are free)."""
    return estimate_series(prompts, cfg)
