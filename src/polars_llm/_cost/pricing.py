"""What a model costs: the ``price=`` option, else the provider's model list, else unknown.

Prices are USD per million tokens, ``(input, output)``. The provider's list (``GET {base_url}/models``, as
OpenRouter serves it: ``pricing.prompt`` / ``pricing.completion`` in USD per token, as strings, and
``top_provider.max_completion_tokens``) is fetched once per base URL and kept in the cache's
``model_prices`` table with its date; it is fetched again after :data:`MAX_AGE` seconds. When the endpoint
has no such list, cannot be reached (offline), or does not price the model, the price is unknown: nothing
fails, the estimate says so.

>>> from polars_llm import MapConfig
>>> price_from_option(MapConfig(model="m", api_key="k", price=(0.15, 0.6)), "m")
Price(input=0.15, output=0.6, source='option', max_output=None)
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import polars as pl

if TYPE_CHECKING:
    from .._config.options import MapConfig
    from .._store.store import Store

__all__ = ["MAX_AGE", "UNKNOWN", "Price", "fetch_model_list", "price_from_option", "resolve_price", "usd"]

MAX_AGE: Final = 7 * 24 * 3600.0
FETCH_TIMEOUT: Final = 5.0
PriceSource = Literal["option", "provider", "unknown"]


def usd(value: float | None) -> str:
    """Money as people read it: cents from a dollar up, three significant digits below (a $0.0005
    budget is not "$0.00").

    >>> [usd(v) for v in (None, 0, 1234.5, 2.0, 0.75, 0.0123, 0.0005, 0.000012345)]
    ['unknown', '$0', '$1,234.50', '$2.00', '$0.750', '$0.0123', '$0.000500', '$0.0000123']
    """
    if value is None:
        return "unknown"
    if value == 0:
        return "$0"
    size = abs(value)
    if size >= 1:
        return f"${value:,.2f}"
    digits = 2 - math.floor(math.log10(size))  # three significant digits
    return f"${value:.{digits}f}"


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens (``None`` when unknown) and where the figures come from."""

    input: float | None
    output: float | None
    source: PriceSource
    max_output: int | None = None  # the model's longest answer in tokens, when the provider lists it

    @property
    def known(self) -> bool:
        return self.input is not None and self.output is not None

    def cost(self, tokens_in: float, tokens_out: float) -> float | None:
        """USD for these tokens, or ``None`` when the price is unknown."""
        if self.input is None or self.output is None:
            return None
        return (tokens_in * self.input + tokens_out * self.output) / 1e6

    def scaled(self, factor: float) -> Price:
        if not self.known:
            return self
        return Price(self.input * factor, self.output * factor, self.source, self.max_output)  # type: ignore[operator]


UNKNOWN: Final = Price(None, None, "unknown")


def price_from_option(cfg: MapConfig, model: str) -> Price | None:
    """The ``price=`` option for ``model`` (a pair, or a mapping of model to pair), if it prices it."""
    price = cfg.price
    if price is None:
        return None
    pair = price.get(model) if isinstance(price, dict) else price
    return None if pair is None else Price(pair[0], pair[1], "option")


def _per_million(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number * 1e6 if number >= 0 else None  # OpenRouter lists variable-price routers as "-1"


def parse_model_list(doc: Any) -> pl.DataFrame:
    """``model, price_in, price_out, max_output`` from a ``/models`` answer (entries without prices too)."""
    rows: list[dict[str, Any]] = []
    data = doc.get("data") if isinstance(doc, dict) else None
    for entry in data if isinstance(data, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        pricing = entry.get("pricing") if isinstance(entry.get("pricing"), dict) else {}
        top = entry.get("top_provider") if isinstance(entry.get("top_provider"), dict) else {}
        max_output = top.get("max_completion_tokens")
        rows.append(
            {
                "model": entry["id"],
                "price_in": _per_million(pricing.get("prompt")),
                "price_out": _per_million(pricing.get("completion")),
                "max_output": max_output if isinstance(max_output, int) and max_output > 0 else None,
            }
        )
    schema = {"model": pl.String, "price_in": pl.Float64, "price_out": pl.Float64, "max_output": pl.Int64}
    return pl.DataFrame(rows, schema=schema)


def fetch_model_list(base_url: str, api_key: str) -> pl.DataFrame | None:
    """``GET {base_url}/models`` (no completion request); ``None`` when there is no usable list."""
    request = urllib.request.Request(
        base_url.rstrip("/") + "/models",
        headers={"Authorization": f"Bearer {api_key}", "User-Agent": "polars-llm"},
    )
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
            doc = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError, TimeoutError):
        return None
    frame = parse_model_list(doc)
    return frame if frame.height else None


def resolve_price(cfg: MapConfig, store: Store, model: str | None = None, *, fetch: bool = True) -> Price:
    """The price of ``model`` (default: the configured one): option, else provider list, else unknown.

    The list is fetched (one HTTP GET) when ``fetch`` and none fresher than :data:`MAX_AGE` is stored;
    otherwise only what is stored is used. Blocking: call it off the event loop.
    """
    model = model if model is not None else (cfg.model or "")
    from_option = price_from_option(cfg, model)
    if from_option is not None or cfg.worker is not None:
        return from_option or UNKNOWN
    prices, fetched_at = store.prices(cfg.url)
    if fetch and (fetched_at is None or time.time() - fetched_at > MAX_AGE):
        fetched = fetch_model_list(cfg.url, cfg.key)
        if fetched is not None:
            store.put_prices(cfg.url, fetched)
            prices = fetched
    row = prices.filter(pl.col("model") == model)
    if row.height == 0:
        return UNKNOWN
    pin, pout, max_output = row.row(0)[1:4]
    if pin is None or pout is None:
        return Price(None, None, "unknown", max_output)
    return Price(pin, pout, "provider", max_output)
