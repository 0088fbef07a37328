"""Money: prices, estimates and the spending budget."""

from __future__ import annotations

from .budget import Budget, Costing, Estimate, TokenModel, budget_exceeded, build_estimate, plan_costs
from .pricing import Price, resolve_price

__all__ = [
    "Budget",
    "Costing",
    "Estimate",
    "Price",
    "TokenModel",
    "budget_exceeded",
    "build_estimate",
    "plan_costs",
    "resolve_price",
]
