"""Money: token estimates without a tokenizer, the pre-run :class:`Estimate`, and the run's budget.

**Tokens.** No tokenizer is downloaded (many machines are offline). The store knows the provider's own
counts of earlier answers of the same model: their ``prompt_tokens`` over the characters sent give a
characters-per-token ratio, and their ``completion_tokens`` the expected answer length. Without history:
:data:`DEFAULT_CHARS_PER_TOKEN` characters per token plus :data:`FRAMING_TOKENS` per request, and
``max_tokens`` (else :data:`DEFAULT_OUTPUT_TOKENS`) output tokens — the estimate says which it used.

**Worst case.** A request's reserved cost assumes its input is a third larger than estimated
(:data:`RESERVE_MARGIN`) and its answer as long as ``max_tokens`` (else the model's maximum output from
the provider's list).

**Budget.** :class:`Budget` reserves each request's worst case before it is sent and settles it with the
real cost when the answer comes; a request whose reservation would take spent + reserved past
``max_cost`` waits for requests in flight to settle, and is not sent if it still does not fit. So spent
stays ≤ ``max_cost`` whenever the provider's reported cost does not exceed the reservation; otherwise the
overshoot is at most what the requests in flight cost beyond their reservations.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
import polars as pl

from ..exceptions import BudgetExceededError, ConfigError
from .pricing import Price, PriceSource, resolve_price, usd

if TYPE_CHECKING:
    from .._config import MapConfig
    from .._store import Store
    from .._transport import Completion

__all__ = [
    "DEFAULT_CHARS_PER_TOKEN",
    "Budget",
    "Costing",
    "Estimate",
    "TokenModel",
    "budget_exceeded",
    "budget_message",
    "build_estimate",
    "nano_usd",
    "plan_costs",
]

DEFAULT_CHARS_PER_TOKEN: Final = 4.0
FRAMING_TOKENS: Final = 8
DEFAULT_OUTPUT_TOKENS: Final = 256
RESERVE_MARGIN: Final = 4 / 3


@dataclass(frozen=True, slots=True)
class TokenModel:
    """How many tokens a request takes, learned from the store (or the defaults above)."""

    chars_per_token: float
    framing: float  # tokens per request beyond the text (role markers…); 0 when learned
    output_tokens: float  # expected completion tokens per request
    output_tokens_max: int | None  # max_tokens, else the model's listed maximum
    learned_from: int  # earlier answers the figures come from (0: defaults)

    @classmethod
    def learn(
        cls, history: tuple[int, int, int, int], *, max_tokens: int | None, max_output: int | None
    ) -> TokenModel:
        """From ``Store.token_history``: (characters sent, prompt tokens, answers, completion tokens)."""
        chars, tokens_in, answers, tokens_out = history
        cap = max_tokens if max_tokens is not None else max_output
        if answers and chars and tokens_in:
            expected = tokens_out / answers
            return cls(chars / tokens_in, 0.0, min(expected, cap) if cap else expected, cap, answers)
        expected = float(max_tokens) if max_tokens is not None else float(DEFAULT_OUTPUT_TOKENS)
        if cap:
            expected = min(expected, cap)
        return cls(DEFAULT_CHARS_PER_TOKEN, FRAMING_TOKENS, expected, cap, 0)

    def input_tokens(self, chars: float, requests: int = 1) -> float:
        return chars / self.chars_per_token + self.framing * requests

    def input_tokens_max(self, chars: float, requests: int = 1) -> float:
        return math.ceil(self.input_tokens(chars, requests) * RESERVE_MARGIN) + FRAMING_TOKENS * requests


class Costing:
    """The run's price and token model: what one answer cost, what one request may cost at most."""

    def __init__(self, price: Price, tokens: TokenModel, system_chars: int = 0) -> None:
        self.price = price
        self.tokens = tokens
        self.system_chars = system_chars

    def of(self, completion: Completion) -> float | None:
        """The provider's ``usage.cost``, else its tokens × price, else ``None``."""
        if completion.cost is not None:
            return completion.cost
        if completion.tokens_in is None and completion.tokens_out is None:
            return None
        return self.price.cost(completion.tokens_in or 0, completion.tokens_out or 0)

    def inputs_worst(self, chars: int, requests: int) -> float:
        """The most input-only requests (embeddings) of ``chars`` characters should cost."""
        cost = self.price.cost(self.tokens.input_tokens_max(chars, requests), 0)
        return cost if cost is not None else math.inf

    def worst(self, prompt: str) -> float:
        """The most this request should cost (see the module docstring); needs a known price."""
        tokens_in = self.tokens.input_tokens_max(len(prompt) + self.system_chars)
        out = self.tokens.output_tokens_max or 0
        cost = self.price.cost(tokens_in, out)
        return cost if cost is not None else math.inf


NANO_USD: Final = 1_000_000_000  # the budget counts money in integer nano-dollars


def nano_usd(usd: float) -> int:
    """``usd`` in whole nano-dollars, rounded up (a reservation never comes out smaller).

    >>> nano_usd(0.1) + nano_usd(0.2) - nano_usd(0.3), nano_usd(1.5e-10)
    (0, 1)
    """
    return math.ceil(round(usd * NANO_USD, 3))


class Budget:
    """``max_cost`` for one run: reserve before sending, settle after; never past the limit.

    Money is counted in integer nano-dollars and requests in flight are counted, not summed: a float
    sum of reservations drifts (``0.096 + … − 0.096`` leaves ``2.8e-17``), and a budget that waits for
    it to reach zero again never ends. So a request that does not fit either waits for one in flight
    to settle or, when none is, ends the run: the budget always lets a request go or stops.

    >>> b = Budget(0.30)
    >>> b.try_reserve(0.1), b.try_reserve(0.1), b.try_reserve(0.1), b.try_reserve(0.1)
    (True, True, True, False)
    >>> b.settle(0.1, 0.05); b.spent, b.in_flight
    (0.05, 2)
    """

    def __init__(self, limit: float, spent: float = 0.0) -> None:
        self.limit = limit  # as the user gave it
        self._limit = math.floor(round(limit * NANO_USD, 3))
        self._spent = nano_usd(spent)
        self._reserved = 0
        self.in_flight = 0  # reservations not settled yet
        self.exhausted = False
        self._settled = anyio.Event()

    @property
    def spent(self) -> float:
        return self._spent / NANO_USD

    @property
    def reserved(self) -> float:
        return self._reserved / NANO_USD

    def add_spent(self, usd: float) -> None:
        """Count money spent outside this run's requests (an earlier chunk's rows, a batch collected)."""
        self._spent += nano_usd(usd)

    def _fits(self, units: int) -> bool:
        return self._spent + self._reserved + units <= self._limit

    def _take(self, units: int) -> None:
        self._reserved += units
        self.in_flight += 1

    async def reserve(self, amount: float) -> bool:
        """Reserve ``amount``; ``False`` (and the budget is exhausted) when it cannot fit."""
        units = nano_usd(amount) if math.isfinite(amount) else None
        while not self.exhausted:
            if units is not None and self._fits(units):
                self._take(units)
                return True
            if self.in_flight == 0:  # nothing in flight will free room
                self.exhausted = True
                break
            await self._settled.wait()
        self._wake()
        return False

    def try_reserve(self, amount: float) -> bool:
        """Reserve ``amount`` if it fits now, without waiting for requests in flight (a batch file's
        reservation is held until the batch is collected, perhaps by another run)."""
        units = nano_usd(amount) if math.isfinite(amount) else None
        if self.exhausted or units is None or not self._fits(units):
            self.exhausted = True
            return False
        self._take(units)
        return True

    def settle(self, reserved: float, cost: float | None) -> None:
        """A reserved request finished: free its reservation and count what it really cost (unknown:
        the reservation)."""
        units = nano_usd(reserved)
        self._reserved = max(0, self._reserved - units)
        self.in_flight = max(0, self.in_flight - 1)
        self._spent += units if cost is None else nano_usd(cost)
        self._wake()

    def _wake(self) -> None:
        self._settled.set()
        self._settled = anyio.Event()


@dataclass(frozen=True, slots=True)
class Estimate:
    """What a map would send and cost, computed without sending a completion request.

    Token counts are for the requests still to send (``to_send``); costs are in USD (``None`` when the
    price is unknown; ``cost_max`` also needs ``max_tokens`` or the model's listed maximum output).
    """

    model: str
    rows: int
    null_rows: int
    unique_prompts: int
    cached: int
    to_send: int
    input_tokens: int
    output_tokens: int
    output_tokens_max: int | None
    price_in: float | None
    price_out: float | None
    price_source: PriceSource
    cost_expected: float | None
    cost_max: float | None
    basis: str  # how the token figures were obtained
    mode: str = "online"  # "batch": the prices are the batch API's, half the online ones

    @property
    def _source(self) -> str:
        """Where the price came from, as shown: ``option``, ``provider``, with the batch halving said."""
        return f"{self.price_source}, halved for batch mode" if self.mode == "batch" else self.price_source

    @property
    def _cost_line(self) -> str:
        if self.cost_expected is None:
            return "unknown (no price)"
        if self.cost_max is None:  # a price, but no bound on the answers' length
            return f"{usd(self.cost_expected)} expected (no maximum without max_tokens)"
        return f"{usd(self.cost_expected)} expected, {usd(self.cost_max)} at most"

    def __str__(self) -> str:
        price = (
            f"${self.price_in:g} in / ${self.price_out:g} out per 1M tokens ({self._source})"
            if self.price_in is not None and self.price_out is not None
            else "unknown (pass price=(input, output) in USD per million tokens)"
        )
        out_max = f" (at most {self.output_tokens_max:,})" if self.output_tokens_max is not None else ""
        return "\n".join(
            [
                f"Estimate for {self.model}",
                f"  rows: {self.rows:,} ({self.null_rows:,} null), unique prompts: {self.unique_prompts:,}",
                f"  cached: {self.cached:,}, to send: {self.to_send:,}",
                f"  tokens: ~{self.input_tokens:,} in, ~{self.output_tokens:,} out{out_max}",
                f"  price: {price}",
                f"  cost: {self._cost_line}",
                f"  ({self.basis})",
            ]
        )

    def _repr_html_(self) -> str:
        rows = [
            ("rows", f"{self.rows:,} ({self.null_rows:,} null)"),
            ("unique prompts", f"{self.unique_prompts:,}"),
            ("cached", f"{self.cached:,}"),
            ("to send", f"{self.to_send:,}"),
            ("input tokens", f"~{self.input_tokens:,}"),
            ("output tokens", f"~{self.output_tokens:,}"
             + (f" (max {self.output_tokens_max:,})" if self.output_tokens_max is not None else "")),
            ("price (USD / 1M tokens)", "unknown" if self.price_in is None
             else f"{self.price_in:g} in, {self.price_out:g} out ({self._source})"),
            ("expected cost", usd(self.cost_expected)),
            ("maximum cost", usd(self.cost_max) if self.cost_expected is None or self.cost_max is not None
             else "no maximum without max_tokens"),
        ]  # fmt: skip
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
            for k, v in rows
        )
        return (
            f"<div><b>Estimate for {html.escape(self.model)}</b><table>{body}</table>"
            f"<small>{html.escape(self.basis)}</small></div>"
        )


def build_estimate(
    *,
    model: str,
    rows: int,
    null_rows: int,
    unique_prompts: int,
    to_send_chars: pl.Series,
    cached: int,
    tokens: TokenModel,
    price: Price,
    system_chars: int,
    mode: str = "online",
) -> Estimate:
    """The :class:`Estimate` of ``to_send_chars`` (one entry per request: the characters of its prompt)."""
    n = len(to_send_chars)
    chars = float(to_send_chars.sum() or 0) + system_chars * n
    tokens_in = tokens.input_tokens(chars, n)
    tokens_out = tokens.output_tokens * n
    out_max = tokens.output_tokens_max * n if tokens.output_tokens_max is not None else None
    cost_max = price.cost(tokens.input_tokens_max(chars, n), out_max) if out_max is not None else None
    basis = (
        f"tokens learned from {tokens.learned_from:,} earlier answers of {model}"
        if tokens.learned_from
        else f"no earlier answers of {model} in the cache: {DEFAULT_CHARS_PER_TOKEN:g} characters per token, "
        f"{tokens.output_tokens:g} output tokens per request assumed"
    )
    return Estimate(
        model=model,
        rows=rows,
        null_rows=null_rows,
        unique_prompts=unique_prompts,
        cached=cached,
        to_send=n,
        input_tokens=round(tokens_in),
        output_tokens=round(tokens_out),
        output_tokens_max=out_max,
        price_in=price.input,
        price_out=price.output,
        price_source=price.source,
        cost_expected=price.cost(tokens_in, tokens_out),
        cost_max=cost_max,
        basis=basis,
        mode=mode,
    )


def budget_exceeded(budget: Budget, left: int) -> BudgetExceededError:
    """The stop of a run whose next request no longer fits in ``max_cost``."""
    return BudgetExceededError(
        budget_message(budget.spent, budget.limit, left),
        spent=budget.spent,
        budget=budget.limit,
        rows_left=left,
    )


def budget_message(spent: float, limit: float, left: int) -> str:
    """What a budget stop says.

    >>> budget_message(0.25, 2.0, 10)[:60]
    'max_cost reached: $0.250 spent of the $2.00 budget on this c'
    """
    return (
        f"max_cost reached: {usd(spent)} spent of the {usd(limit)} budget on this call's "
        f"rows; {left:,} rows were not sent (still pending). Raise max_cost and run again to continue"
    )


def plan_costs(
    cfg: MapConfig, store: Store, keys: pl.DataFrame, *, answers: bool = True
) -> tuple[Costing, float | None]:
    """The run's :class:`Costing`, and with ``max_cost`` what was already spent on ``keys`` (blocking:
    call it off the event loop; the :class:`Budget` itself is made on the loop).

    Raises :class:`ConfigError` before any request when ``max_cost`` cannot be kept: no known price, or
    (for requests with ``answers``, i.e. not embeddings) neither ``max_tokens`` nor a listed maximum
    output to bound an answer.
    """
    model = cfg.model or ""
    price = resolve_price(cfg, store, fetch=cfg.max_cost is not None)
    tokens = TokenModel.learn(
        store.token_history(model), max_tokens=cfg.max_tokens, max_output=price.max_output
    )
    costing = Costing(price, tokens, len(cfg.system or ""))
    if cfg.max_cost is None:
        return costing, None
    if not price.known:
        raise ConfigError(
            f"max_cost needs a price, and none is known for {model!r} (the endpoint {cfg.url} lists none): "
            "pass price=(input, output) in USD per million tokens"
        )
    if answers and tokens.output_tokens_max is None:
        raise ConfigError(
            f"max_cost needs a bound on each answer's length: pass max_tokens=... (the provider lists no "
            f"maximum output for {model!r})"
        )
    return costing, store.spent(keys, (price.input, price.output))  # type: ignore[arg-type]
