"""The entry points: typed free functions, the ``llm`` namespace, streaming, embeddings."""

from __future__ import annotations

from .embed import embed_series
from .functions import (
    EmbedOptions,
    MapOptions,
    estimate,
    llm_embed,
    llm_embed_frame,
    llm_embed_series,
    llm_map,
    llm_map_async,
    llm_map_frame,
    llm_map_series,
    output_dtype,
)
from .modes import Mode, mode_of
from .pipeline import EMPTY_STATE, arun, assemble, estimate_series, map_series, per_row, prepare
from .stream import map_chunks

__all__ = [
    "EMPTY_STATE",
    "EmbedOptions",
    "MapOptions",
    "Mode",
    "arun",
    "assemble",
    "embed_series",
    "estimate",
    "estimate_series",
    "llm_embed",
    "llm_embed_frame",
    "llm_embed_series",
    "llm_map",
    "llm_map_async",
    "llm_map_frame",
    "llm_map_series",
    "map_chunks",
    "map_series",
    "mode_of",
    "output_dtype",
    "per_row",
    "prepare",
]
