"""The ``polars-llm`` command: :func:`main` parses the arguments and runs one subcommand.

The subcommands live beside it: ``run``/``estimate`` (:mod:`.run`), ``embed``, ``status``/``export``
(:mod:`.store`), ``batches``; :mod:`.files` reads and writes the input and output files.
"""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
