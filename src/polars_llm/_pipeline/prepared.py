"""One call's input as the pipeline prepared it (:class:`Prepared`): what a mode answers.

>>> import polars as pl
>>> p = Prepared(pl.Series("q", ["a", "a"]), pl.Series("prompt", ["a"]), pl.Series("key", ["k"]))
>>> len(p)
1
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from .._engine import Work

__all__ = ["Prepared"]


@dataclass(frozen=True, slots=True)
class Prepared:
    """One call's input: the prompt of every row, and the unique prompts to answer with their keys.

    A struct input (:mod:`polars_llm._request.inputs`) also has each row's key (``row_keys``) and, per unique
    request, its payload and per-row store columns (``work``).
    """

    rows: pl.Series  # String, one per input row, nulls kept, named like the input column
    unique: pl.Series  # "prompt": unique non-null prompts in first-seen order
    keys: pl.Series  # "key": their content keys
    row_keys: pl.Series | None = None  # struct input: each row's key (null for a null prompt)
    work: Work | None = None  # struct input: per-request payloads and store columns

    def __len__(self) -> int:
        return len(self.keys)
