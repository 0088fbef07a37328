"""polars_llm: run an LLM over a Polars column — durable, rate-limited, resumable.

Importing the package registers the ``llm`` namespace on ``pl.Expr``, ``pl.Series``, ``pl.DataFrame``
and ``pl.LazyFrame``.

>>> import polars as pl, polars_llm
>>> from polars_llm import sim
>>> with sim.serve() as url:
...     df = pl.DataFrame({"prompt": ["Say hi", "Say bye"]})
...     out = df.llm.map("prompt", "demo-model", base_url=url, api_key="sk-demo", cache=None, progress=False)
>>> out["status"].to_list()
['done', 'done']
"""

from __future__ import annotations

from . import _namespace  # noqa: F401  (registers the namespaces)
from ._batch import batches, cancel_batch
from ._config import DEFAULT_BASE_URL, DEFAULT_CACHE, DEFAULT_CACHE_PATH, MapConfig, Secret, resolve_config
from ._conflict import NamespaceConflictWarning
from ._cost import Estimate
from ._operators import (
    PlanEstimate,
    estimate_dedup,
    estimate_join,
    estimate_reduce,
    estimate_top_k,
    llm_classify,
    llm_dedup,
    llm_extract,
    llm_filter,
    llm_join,
    llm_reduce,
    llm_reduce_frame,
    llm_top_k,
)
from ._pipeline import (
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
from ._request import template
from ._version import version as _version
from .exceptions import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BatchUnsupportedError,
    BudgetExceededError,
    ColumnTypeError,
    ConfigError,
    ContentFilterError,
    EndpointUnreachableError,
    FatalError,
    InputError,
    InsufficientCreditsError,
    MalformedResponseError,
    NotFoundError,
    OutputTruncatedError,
    OutputValidationError,
    PermissionDeniedError,
    PolarsLLMError,
    ProviderWaitError,
    RateLimitError,
    RefusalError,
    RowError,
    RowsFailedError,
    ServerError,
    StoreError,
    TransientError,
    UnusableAnswerError,
)
from .seed import DB_URL_DEFAULT, export_jsonl, export_parquet, prompt_map

__version__ = _version()

__all__ = [
    "DB_URL_DEFAULT",
    "DEFAULT_BASE_URL",
    "DEFAULT_CACHE",
    "DEFAULT_CACHE_PATH",
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BatchUnsupportedError",
    "BudgetExceededError",
    "ColumnTypeError",
    "ConfigError",
    "ContentFilterError",
    "EmbedOptions",
    "EndpointUnreachableError",
    "Estimate",
    "FatalError",
    "InputError",
    "InsufficientCreditsError",
    "MalformedResponseError",
    "MapConfig",
    "MapOptions",
    "NamespaceConflictWarning",
    "NotFoundError",
    "OutputTruncatedError",
    "OutputValidationError",
    "PermissionDeniedError",
    "PlanEstimate",
    "PolarsLLMError",
    "ProviderWaitError",
    "RateLimitError",
    "RefusalError",
    "RowError",
    "RowsFailedError",
    "Secret",
    "ServerError",
    "StoreError",
    "TransientError",
    "UnusableAnswerError",
    "__version__",
    "batches",
    "cancel_batch",
    "estimate",
    "estimate_dedup",
    "estimate_join",
    "estimate_reduce",
    "estimate_top_k",
    "export_jsonl",
    "export_parquet",
    "llm_classify",
    "llm_dedup",
    "llm_embed",
    "llm_embed_frame",
    "llm_embed_series",
    "llm_extract",
    "llm_filter",
    "llm_join",
    "llm_map",
    "llm_map_async",
    "llm_map_frame",
    "llm_map_series",
    "llm_reduce",
    "llm_reduce_frame",
    "llm_top_k",
    "output_dtype",
    "prompt_map",
    "resolve_config",
    "template",
]
