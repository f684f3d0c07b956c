"""A build's budget ledger: its limits (top-ups included) and what its model calls spent, per role.
Its own methods are the only writers of its fields (tests/core/test_owners.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.feedback import ModelUsage

USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "cost_usd", "requests")


@dataclass
class BudgetLedger:
    max_tokens: int | None = None  # None: no limit
    max_cost_usd: float | None = None
    usage: dict[str, dict[str, float]] = field(default_factory=dict)  # per role, summed

    def add(self, role: str, usage: ModelUsage) -> None:
        """One role call's tokens, cost and requests, added to its role's totals."""
        totals = self.usage.setdefault(role, {"calls": 0, **dict.fromkeys(USAGE_FIELDS, 0)})
        totals["calls"] += 1
        for name in USAGE_FIELDS:
            totals[name] = round(totals[name] + getattr(usage, name), 8)

    def top_up(self, tokens: int, cost_usd: float) -> None:
        """Raise the limits the build has (a dimension without a limit stays without one)."""
        if self.max_tokens is not None:
            self.max_tokens += tokens
        if self.max_cost_usd is not None:
            self.max_cost_usd = round(self.max_cost_usd + cost_usd, 8)

    def tokens(self) -> int:
        return int(sum(u["prompt_tokens"] + u["completion_tokens"] for u in self.usage.values()))

    def cost(self) -> float:
        return round(sum(u["cost_usd"] for u in self.usage.values()), 8)

    def problem(self) -> str | None:
        """What of the budget is spent, or None while some is left."""
        tokens, cost = self.tokens(), self.cost()
        if self.max_tokens is not None and tokens >= self.max_tokens:
            return f"{tokens} of {self.max_tokens} tokens used"
        if self.max_cost_usd is not None and cost >= self.max_cost_usd:
            return f"${cost:.4f} of ${self.max_cost_usd:.4f} spent"
        return None
