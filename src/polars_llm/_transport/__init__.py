"""How requests travel: the transports, error mapping, rate-limit headers."""

from __future__ import annotations

from .answer import error_text, interpret
from .client import Completion, OpenAITransport, Transport, error_for_status, make_transport, parse_completion
from .limit_headers import Budget, Limits, describe_hint, hint_header, parse_limits, wait_hint
from .retry import backoff_delay, next_delay

__all__ = [
    "Budget",
    "Completion",
    "Limits",
    "OpenAITransport",
    "Transport",
    "backoff_delay",
    "describe_hint",
    "error_for_status",
    "error_text",
    "hint_header",
    "interpret",
    "make_transport",
    "next_delay",
    "parse_completion",
    "parse_limits",
    "wait_hint",
]
