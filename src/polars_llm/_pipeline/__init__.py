"""The entry points: typed free functions, the ``llm`` namespace, streaming, embeddings."""
