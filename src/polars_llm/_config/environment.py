"""A config from arguments, then the environment, then ``./.env``: :func:`resolve_config`.

>>> env_value("POLARS_LLM_SURELY_UNSET_VARIABLE") is None
True
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from ..exceptions import ConfigError
from .options import OPTION_NAMES, MapConfig, no_model_error

__all__ = ["env_value", "resolve_config"]


def _dotenv() -> Mapping[str, str | None]:
    path = Path.cwd() / ".env"
    return dotenv_values(path) if path.is_file() else {}


def env_value(name: str) -> str | None:
    """``name`` from the environment, else from ``./.env``; ``None`` when unset or empty."""
    return os.environ.get(name) or _dotenv().get(name) or None


def resolve_config(
    *, api_key_env: str = "OPENROUTER_API_KEY", model_required: bool = True, **options: Any
) -> MapConfig:
    """Build a :class:`MapConfig` from options, then the environment, then ``./.env``.

    ``model``, ``api_key`` and ``base_url`` left out (or ``None``) come from ``MODEL``, ``api_key_env``
    and ``POLARS_LLM_BASE_URL``. Unknown options raise :class:`ConfigError` naming them, and so does a
    missing model unless ``model_required=False`` (the input may name a model per row; it is checked
    once the input is known, still before any request).

    >>> cfg = resolve_config(model="m", api_key="k", cache=None, concurrency=8)
    >>> (cfg.model, cfg.concurrency, cfg.cache)
    ('m', 8, None)
    """
    unknown = set(options) - OPTION_NAMES
    if unknown:
        raise ConfigError(f"unknown option(s): {', '.join(sorted(unknown))}")
    for name, env in (("model", "MODEL"), ("api_key", api_key_env), ("base_url", "POLARS_LLM_BASE_URL")):
        if options.get(name) is None:
            options[name] = env_value(env)
    try:
        cfg = MapConfig(**options)
    except TypeError as exc:  # wrong option types that dataclass itself rejects
        raise ConfigError(str(exc)) from None
    if model_required and cfg.model is None and cfg.worker is None:
        raise no_model_error()
    return cfg
