"""The online mode: run loop, writer, session; ``pace/`` holds rate control."""

from __future__ import annotations

from .pace import Pacer, Ticket, TokenBucket
from .run import FAIL, STOP, Run, Sink, Work, write_batches
from .session import QueryAborted, Session, execute

__all__ = [
    "FAIL",
    "STOP",
    "Pacer",
    "QueryAborted",
    "Run",
    "Session",
    "Sink",
    "Ticket",
    "TokenBucket",
    "Work",
    "execute",
    "write_batches",
]
