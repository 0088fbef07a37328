"""Rate control: the pacer, its learner, the user's token buckets, retry delays."""

from __future__ import annotations

from .buckets import TokenBucket
from .pacer import Pacer, Ticket

__all__ = ["Pacer", "Ticket", "TokenBucket"]
