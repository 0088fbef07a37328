"""The cache file's tables: their description for users, the columns the store reads and writes, and the
``k64`` look-up key.

:data:`TABLES_DOC` is the reference of the file's tables (``docs/store.md`` is generated from it); the
tables themselves are created and upgraded by :mod:`polars_llm._store.migrations`.

>>> OUTPUT_COLUMNS[:3]
('key', 'prompt', 'model')
"""

from __future__ import annotations

from typing import Final

import polars as pl

__all__ = ["DETAIL_SCHEMA", "OUTPUT_COLUMNS", "TABLES_DOC", "k64"]

TABLES_DOC: Final = """\
The cache is one DuckDB file (default `.polars_llm/cache.duckdb`); open it with any DuckDB client
while no run is using it.

**`requests`**: one row per request, identified by its content key.

| column | type | meaning |
|---|---|---|
| `key` | VARCHAR | 32-hex content key (base URL, model, system prompt, parameters, schema and prompt) |
| `prompt` | VARCHAR | the prompt text |
| `base_url`, `model` | VARCHAR | endpoint and model |
| `system` | VARCHAR | system prompt, or NULL |
| `input` | VARCHAR | a struct row's earlier turns and images as JSON text (`data:` URLs shortened), or NULL |
| `params` | VARCHAR | generation parameters as JSON text |
| `schema_name`, `schema` | VARCHAR | response model name and JSON schema, or NULL |
| `status` | VARCHAR | `pending`, `done` or `failed` |
| `result` | VARCHAR | raw text, or validated JSON text for a response model |
| `embedding` | FLOAT[] | the vector of an `llm.embed` request (its `params` hold `"kind": "embedding"`) |
| `error` | VARCHAR | error message (validation failures include the raw model output) |
| `error_kind` | VARCHAR | machine-readable kind, e.g. `rate_limit`, `output_validation` |
| `attempts` | INTEGER | attempts made, summed over every run |
| `tokens_in`, `tokens_out` | BIGINT | token usage reported by the provider (all attempts) |
| `tokens_reasoning` | BIGINT | reasoning tokens (already part of `tokens_out`) |
| `tokens_cached` | BIGINT | prompt tokens served from the provider's cache (part of `tokens_in`) |
| `cost` | DOUBLE | USD: the provider's `usage.cost`, else tokens × price when a price is known, else NULL |
| `created_at`, `updated_at`, `finished_at` | TIMESTAMP | UTC times |
| `batch_id` | VARCHAR | batch mode: the batch the request was last sent in, or NULL |
| `k64` | UBIGINT | the key's first 16 hex digits as an integer (0 for a key that is not hex): fast look-ups |

**`batches`**: one row per batch submitted with `mode="batch"`. A batch is *live* until its results are
collected (`collected_at` NULL); a request in a live batch is never sent again.

| column | type | meaning |
|---|---|---|
| `batch_id` | VARCHAR | the provider's batch id |
| `base_url`, `model`, `endpoint` | VARCHAR | where it was submitted (`/v1/chat/completions`) |
| `input_file_id`, `output_file_id`, `error_file_id` | VARCHAR | the provider's file ids |
| `status` | VARCHAR | provider status last seen (`in_progress`, `completed`, `expired`, …) |
| `requests`, `bytes` | INTEGER, BIGINT | requests in the input file and its size |
| `completed`, `failed` | INTEGER | the provider's request counts, last seen |
| `rows_done`, `rows_failed`, `rows_requeued` | INTEGER | collected: answers, failures, rows back to pending |
| `message` | VARCHAR | batch-level errors, or why rows were put back to pending |
| `submitted_at`, `checked_at`, `finished_at`, `collected_at` | TIMESTAMP | UTC times |

**`model_prices`**: the provider's model list, fetched once per base URL and reused: `base_url`,
`model` VARCHAR, `price_in`, `price_out` DOUBLE (USD per million tokens), `max_output` BIGINT (longest
answer the model gives, when listed), `fetched_at` TIMESTAMP.

**`schema_version`**: `version` INTEGER, `applied_at` TIMESTAMP; one row per applied migration.

No API key is stored anywhere in the file.
"""

OUTPUT_COLUMNS: Final = (
    "key",
    "prompt",
    "model",
    "status",
    "result",
    "error",
    "attempts",
    "tokens_in",
    "tokens_out",
    "tokens_reasoning",
    "tokens_cached",
    "cost",
    "created_at",
    "finished_at",
)
# Per-row details a lookup can add (``include=``), with their dtypes.
DETAIL_SCHEMA: Final = {
    "error_kind": pl.String,
    "attempts": pl.Int64,
    "tokens_in": pl.Int64,
    "tokens_out": pl.Int64,
    "tokens_reasoning": pl.Int64,
    "tokens_cached": pl.Int64,
    "cost": pl.Float64,
}


def k64(key: str = "key") -> pl.Expr:
    """The ``k64`` column of the keys in column ``key``, as :data:`~polars_llm._store.migrations.K64_SQL`
    computes it in the file.

    >>> pl.DataFrame({"key": ["00000000000000ffabc", "k1"]}).select(k64()).to_series().to_list()
    [255, 0]
    """
    head = pl.col(key).str.slice(0, 16)
    hexed = head.str.to_integer(base=16, dtype=pl.UInt64, strict=False)
    return pl.when(head.str.contains("^[0-9a-f]{16}$")).then(hexed).otherwise(0).cast(pl.UInt64).alias("k64")
