"""The ``polars-llm`` command: :func:`main` parses the arguments and runs one subcommand.

The subcommands live beside it: ``run``/``estimate`` (:mod:`.run`), ``embed``, ``status``/``export``
(:mod:`.store`), ``batches``. What they share: :mod:`.files` (the input and output files), :mod:`.options`
(``MapConfig``'s options as flags, and back to a config), :mod:`.errors` (``CLIError``, exit codes).
"""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
