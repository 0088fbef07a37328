"""Operators over many rows: reduce, join, top_k, dedup (:mod:`.reduce`, :mod:`.join`, :mod:`.topk`,
:mod:`.dedup`), built on the ``llm.map`` / ``llm.embed`` pipeline."""
