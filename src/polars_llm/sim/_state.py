"""The simulator's shared state: counters, per-prompt attempts, fault draws, rate limits, the request log.

One :class:`SimState` per server. The handlers (chat, embeddings, batches) change it only through its
methods, each of which holds the lock for its own step, so :meth:`SimState.stats`, :meth:`SimState.reset`
and :meth:`SimState.configure` may be called from any thread while the server's event loop answers.

>>> from polars_llm.sim._options import SimConfig
>>> state = SimState(SimConfig())
>>> state.draw(SimConfig(), [(("m", "hi [[status:429:1]]", False), (("status", 429, 1, 0.0, ""),))])
('status', 429, 0.0, '')
>>> state.draw(SimConfig(), [(("m", "hi [[status:429:1]]", False), (("status", 429, 1, 0.0, ""),))])
(None, 0, 0.0, '')
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Final

from aiohttp import web

from ..exceptions import ConfigError
from ._limiter import Limiter
from ._options import FAULT_RATES, LIVE_FIXED, SimConfig
from ._wire import Marker, error_response, retry_headers

__all__ = ["Draw", "SimState"]

# (fault or None, status code, seconds to wait first, the marker's text)
Draw = tuple[str | None, int, float, str]

_RATE_FAULTS: Final = {
    "reset_rate": "reset",
    "stall_rate": "stall",
    "error_rate": "error",
    "malformed_rate": "malformed",
    "truncated_rate": "truncated",
    "error_in_200_rate": "error200",
    "empty_choices_rate": "empty",
}


class SimState:
    """Counters and random draws of one simulated server (see the module docstring)."""

    def __init__(self, config: SimConfig) -> None:
        self._lock = threading.Lock()
        self.config = config
        self._rng = random.Random(config.seed)
        self._burst_until = time.monotonic() + config.burst_seconds if config.burst_429 else 0.0
        self._burst_left = config.burst_requests
        self._zero()

    def _zero(self) -> None:
        self._requests = 0
        self._ok = 0
        self._status_counts: dict[str, int] = {}
        self._faults: dict[str, int] = {}
        self._per_prompt: dict[str, int] = {}
        self._attempts: dict[Hashable, int] = {}
        self._max_in_flight = 0
        self._in_flight = 0
        self._cancelled = 0
        self._tokens_in = 0
        self._tokens_out = 0
        self._cost = 0.0
        self._next_id = 0
        self._limiter = Limiter()
        self._embedding_requests = 0
        self._embedding_inputs = 0
        self._log: deque[dict[str, Any]] = deque(maxlen=self.config.request_log)

    # ----------------------------------------------------------------- control (any thread)

    def stats(self, per_prompt: bool = True) -> dict[str, Any]:
        with self._lock:
            out: dict[str, Any] = {
                "requests": self._requests,
                "ok": self._ok,
                "status_counts": dict(self._status_counts),
                "unique_prompts": len(self._per_prompt),
                "max_in_flight": self._max_in_flight,
                "in_flight": self._in_flight,
                "cancelled": self._cancelled,
                "tokens_in": self._tokens_in,
                "tokens_out": self._tokens_out,
                "cost": self._cost,
                "faults": dict(self._faults),
                "burst_active": time.monotonic() < self._burst_until,
                "embedding_requests": self._embedding_requests,
                "embedding_inputs": self._embedding_inputs,
                "logged_requests": len(self._log),
            }
            if per_prompt:
                out["per_prompt"] = dict(self._per_prompt)
        return out

    def requests(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The last request bodies received (oldest first): ``{"path", "body"}`` each, at most
        ``request_log`` of them; ``limit`` keeps the last ``limit``."""
        with self._lock:
            log = list(self._log)
        return log[-limit:] if limit else log

    def reset(self) -> None:
        """Zero every counter, forget per-prompt attempts and rate-limit windows, reseed the RNG."""
        with self._lock:
            in_flight = self._in_flight
            self._zero()
            self._in_flight = in_flight
            self._burst_left = self.config.burst_requests
            self._rng = random.Random(self.config.seed)

    def configure(self, **changes: Any) -> SimConfig:
        fixed = LIVE_FIXED.intersection(changes)
        if fixed:
            raise ConfigError(f"cannot change {', '.join(sorted(fixed))} while the server runs")
        with self._lock:
            new = self.config.replace(**changes)
            if "seed" in changes:
                self._rng = random.Random(new.seed)
            if "request_log" in changes:
                self._log = deque(self._log, maxlen=new.request_log)
            if new.burst_429 and ("burst_429" in changes or "burst_seconds" in changes):
                self._burst_until = time.monotonic() + new.burst_seconds
            elif not new.burst_429:
                self._burst_until = 0.0
            if "burst_requests" in changes:
                self._burst_left = new.burst_requests
            self.config = new
        return new

    # ------------------------------------------------------------- one request's steps (event loop)

    def record(self, path: str, body: Any) -> None:
        """Keep a request body in the log (when ``request_log`` > 0)."""
        if self._log.maxlen:
            with self._lock:
                self._log.append({"path": path, "body": body})

    def began(self) -> None:
        """A request arrived: counted, and in flight until :meth:`ended`."""
        with self._lock:
            self._requests += 1
            self._in_flight += 1
            if self._in_flight > self._max_in_flight:
                self._max_in_flight = self._in_flight

    def ended(self, status: int, *, cancelled: bool = False) -> None:
        """A request left (answered with ``status``; 0: no answer), or the client ``cancelled`` it."""
        with self._lock:
            self._in_flight -= 1
            if cancelled:
                self._cancelled += 1
            if status:
                key = str(status)
                self._status_counts[key] = self._status_counts.get(key, 0) + 1

    def admit(
        self, cfg: SimConfig, prompts: Iterable[str], tokens: int, *, embeddings: bool = False
    ) -> tuple[web.Response | None, dict[str, str]]:
        """Count the request's prompts, then burst mode, the request cap and the token cap: the refusal
        (or ``None``) and the rate-limit headers to send with an answer; see :mod:`._limiter`."""
        now = time.monotonic()
        with self._lock:
            if embeddings:
                self._embedding_requests += 1
            for prompt in prompts:
                self._per_prompt[prompt] = self._per_prompt.get(prompt, 0) + 1
            if (self._burst_until and now < self._burst_until) or self._burst_left > 0:
                self._burst_left = max(0, self._burst_left - 1)
                self._count_fault("burst_429")
                hint = retry_headers(cfg.burst_retry_after) if cfg.burst_retry_after else {}
                return error_response(429, headers=hint), {}
            rejected, headers, fault = self._limiter.admit(cfg, tokens, now)
            if fault:
                self._count_fault(fault)
            return rejected, headers

    def draw(
        self,
        cfg: SimConfig,
        marked: Sequence[tuple[Hashable, Sequence[Marker]]],
        *,
        jitter: bool = False,
    ) -> Draw:
        """The request's fault: the markers of its inputs first (each ``(attempt key, markers)`` counts one
        attempt; the first active marker wins, delays add up), else one draw for the global fault rates;
        with ``jitter``, plus the latency jitter."""
        fault: str | None = None
        code = 0
        delay = 0.0
        value = ""
        with self._lock:
            for key, markers in marked:
                attempt = self._attempts.get(key, 0) + 1
                self._attempts[key] = attempt
                for kind, status, first_n, extra, text in markers:
                    if kind == "delay":
                        delay += extra
                    elif fault is None and (first_n is None or attempt <= first_n):
                        fault, code, value = kind, status, text
            if fault is None:
                fault, code = self._rate_fault(cfg)
            if jitter and cfg.jitter:
                delay += self._rng.uniform(-cfg.jitter, cfg.jitter)
        return fault, code, delay, value

    def _rate_fault(self, cfg: SimConfig) -> tuple[str | None, int]:
        u = -1.0
        for name in FAULT_RATES:
            rate = getattr(cfg, name)
            if rate:
                if u < 0:
                    u = self._rng.random()
                if u < rate:
                    kind = _RATE_FAULTS[name]
                    code = self._rng.choice(cfg.error_statuses) if kind == "error" else 0
                    return kind, code
                u -= rate
        return None, 0

    def count_fault(self, name: str) -> None:
        with self._lock:
            self._count_fault(name)

    def _count_fault(self, name: str) -> None:
        self._faults[name] = self._faults.get(name, 0) + 1

    def next_id(self) -> int:
        """A fresh number for a completion's id."""
        with self._lock:
            self._next_id += 1
            return self._next_id

    def answered(self, cfg: SimConfig, tokens_in: int, tokens_out: int) -> None:
        """A chat answer went out: its tokens and what it cost, reported or not (the stats are the ground
        truth for tests); its tokens count toward the token window too."""
        with self._lock:
            self._ok += 1
            self._tokens_in += tokens_in
            self._tokens_out += tokens_out
            self._cost += tokens_in * cfg.prompt_price + tokens_out * cfg.completion_price
            self._limiter.add_tokens(cfg, tokens_out, time.monotonic())

    def embedded(self, inputs: int, tokens: int, cost: float) -> None:
        """An embeddings answer went out for ``inputs`` texts."""
        with self._lock:
            self._ok += 1
            self._embedding_inputs += inputs
            self._tokens_in += tokens
            self._cost += cost
