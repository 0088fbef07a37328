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

from ._batch.admin import batches, cancel_batch
from ._config.options import (
    DEFAULT_BASE_URL,
    DEFAULT_CACHE,
    DEFAULT_CACHE_PATH,
    MapConfig,
    Secret,
    resolve_config,
)
from ._cost.budget import Estimate
from ._operators.dedup import estimate_dedup, llm_dedup
from ._operators.estimate import PlanEstimate
from ._operators.join import estimate_join, llm_join
from ._operators.reduce import estimate_reduce, llm_reduce, llm_reduce_frame
from ._operators.topk import estimate_top_k, llm_top_k
from ._pipeline import namespace as _namespace  # noqa: F401  (registers the namespaces)
from ._pipeline.functions import (
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
from ._request.template import template
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
    ServerError,
    StoreError,
    TransientError,
    UnusableAnswerError,
)
from .seed import DB_URL_DEFAULT, export_jsonl, export_parquet, prompt_map

__version__ = "0.1.0"

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
    "llm_dedup",
    "llm_embed",
    "llm_embed_frame",
    "llm_embed_series",
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
