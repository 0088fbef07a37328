"""The estimate of a set operator: its stages' :class:`~polars_llm.Estimate` s and their totals."""

from __future__ import annotations

from dataclasses import dataclass

from .._cost import Estimate

__all__ = ["PlanEstimate"]


def _total(values: list[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


@dataclass(frozen=True, slots=True)
class PlanEstimate:
    """What an operator would send and cost, stage by stage, without sending a request.

    ``to_send`` counts requests (an embedding request holds up to ``batch_size`` texts, so its stage
    counts texts); costs are ``None`` when a stage's price is unknown. ``detail`` says what was planned
    (groups and leaves, candidate pairs, rounds).

    >>> from polars_llm._cost.budget import Estimate
    >>> e = Estimate("m", 2, 0, 2, 0, 2, 10, 20, None, 1.0, 2.0, "option", 0.5, None, "defaults")
    >>> plan = PlanEstimate("reduce", (("level 1", e), ("level 2", e)), "1 group")
    >>> plan.to_send, plan.cost_expected, plan.cost_max
    (4, 1.0, None)
    """

    operator: str
    stages: tuple[tuple[str, Estimate], ...]
    detail: str

    @property
    def to_send(self) -> int:
        return sum(e.to_send for _, e in self.stages)

    @property
    def cached(self) -> int:
        return sum(e.cached for _, e in self.stages)

    @property
    def cost_expected(self) -> float | None:
        return _total([e.cost_expected for _, e in self.stages])

    @property
    def cost_max(self) -> float | None:
        return _total([e.cost_max for _, e in self.stages])

    def stage(self, label: str) -> Estimate:
        """The estimate of the stage whose label starts with ``label``."""
        for name, est in self.stages:
            if name.startswith(label):
                return est
        raise KeyError(label)

    def __str__(self) -> str:
        def usd(v: float | None) -> str:
            return "unknown" if v is None else f"${v:,.4f}"

        lines = [f"Estimate for {self.operator}: {self.detail}"]
        for name, est in self.stages:
            lines.append(
                f"  {name}: {est.to_send:,} to send ({est.cached:,} cached), "
                f"~{est.input_tokens:,} tokens in, ~{est.output_tokens:,} out, {usd(est.cost_expected)}"
            )
        lines.append(f"  total: {self.to_send:,} to send, {usd(self.cost_expected)} expected, "
                     f"{usd(self.cost_max)} at most")  # fmt: skip
        return "\n".join(lines)
