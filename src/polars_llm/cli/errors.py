"""The user's mistakes on the command line: :class:`CLIError` and the exit codes it leaves with.

>>> err = CLIError("--column is missing")
>>> str(err), err.code == EXIT_USAGE
('--column is missing', True)
"""

from __future__ import annotations

from typing import Final

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "CLIError"]

EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2


class CLIError(Exception):
    """A message for the user and the exit code to leave with."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code
