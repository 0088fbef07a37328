"""Run settings: the option schema (:class:`MapConfig`) and its checks."""

from __future__ import annotations

from .checks import check_model
from .options import (
    CHAT_ONLY,
    DEFAULT_BASE_URL,
    DEFAULT_CACHE,
    DEFAULT_CACHE_PATH,
    EMBED_ONLY,
    INCLUDE_DTYPES,
    CacheArg,
    MapConfig,
    Mode,
    Secret,
    Transport,
    Worker,
    env_value,
    no_model_error,
    option_fields,
    resolve_cache,
    resolve_config,
    with_embed_options,
    with_options,
)

__all__ = [
    "CHAT_ONLY",
    "DEFAULT_BASE_URL",
    "DEFAULT_CACHE",
    "DEFAULT_CACHE_PATH",
    "EMBED_ONLY",
    "INCLUDE_DTYPES",
    "CacheArg",
    "MapConfig",
    "Mode",
    "Secret",
    "Transport",
    "Worker",
    "check_model",
    "env_value",
    "no_model_error",
    "option_fields",
    "resolve_cache",
    "resolve_config",
    "with_embed_options",
    "with_options",
]
