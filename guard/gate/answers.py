"""The answers guard gives itself, never forwarded: a denial, and its own `guard-budget` tool.

A denial is a tool result with `isError: true` (so the model reads it and can act on it): a first line
`Denied by guard: <reason> (rule …; … left; retry after …)` and the same as `structuredContent`.
"""

from __future__ import annotations

from guard.core import JSON
from guard.operators.budget_view import budget_fields
from guard.policy.rules import Denial
from guard.text import duration
from ledgers import Amount, AmountError, BudgetState

BUDGET_TOOL = "guard-budget"
BUDGET_TOOL_DEFINITION: JSON = {
    "name": BUDGET_TOOL,
    "title": "Your budgets (guard)",
    "description": (
        "Read-only, free. The spending budgets guard enforces for you: for each, what is left, spent and held,"
        " in which unit, and when it resets. Call it before paying to plan what you can afford."
    ),
    "inputSchema": {"type": "object", "properties": {}, "additionalProperties": False},
    "annotations": {"readOnlyHint": True, "destructiveHint": False, "idempotentHint": True, "openWorldHint": False},
}

NO_BUDGETS = "No budgets apply to you: guard denies paying tools without one."


def denial_result(denial: Denial) -> JSON:
    """The tool result the agent sees: a first line it can act on, and machine-readable fields."""
    details = [f"rule {denial.rule}"]
    if denial.remaining is not None:
        details.append(f"{_quantity(denial.remaining, denial.unit)} left")
    if denial.retry_after_s is not None:
        details.append(f"retry after {duration(denial.retry_after_s)}")
    if denial.approval_id is not None:
        details.append(f"approval {denial.approval_id}")
    text = f"Denied by guard: {denial.reason} ({'; '.join(details)})"
    return {
        "content": [{"type": "text", "text": text}],
        "isError": True,
        "structuredContent": {
            "denied": True,
            "rule": denial.rule,
            "reason": denial.reason,
            "remaining": denial.remaining,
            "unit": denial.unit,
            "retry_after_s": denial.retry_after_s,
            "approval_id": denial.approval_id,
        },
    }


def budget_result(states: list[BudgetState]) -> JSON:
    """The `guard-budget` answer: a line per budget the model can read, and the same as data."""
    lines = [
        f"{s.budget.name} ({s.budget.scope}, per {s.budget.window}): {_quantity(s.remaining, s.budget.limit.unit)}"
        f" left of {s.budget.limit}; spent {_quantity(s.spent, s.budget.limit.unit)},"
        f" held {_quantity(s.held + s.in_doubt, s.budget.limit.unit)}"
        + (f"; resets at {s.resets_at.isoformat(timespec='seconds')}" if s.resets_at else "")
        for s in states
    ]
    return {
        "content": [{"type": "text", "text": "\n".join(lines) or NO_BUDGETS}],
        "structuredContent": {"budgets": [budget_fields(s) for s in states]},
        "isError": False,
    }


def _quantity(value: int, unit: str | None) -> str:
    try:
        return str(Amount(value, unit)) if unit else str(value)
    except AmountError:  # not money: calls, say
        return f"{value} {unit}"
