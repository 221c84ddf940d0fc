"""Budgets and balances as operators and agents read them: plain JSON-ready dicts, one shape for
`guard budget show --json` and the agent's `guard-budget` tool. Money stays integers with a unit."""

from __future__ import annotations

from datetime import datetime

from guard.core import JSON
from ledgers import Authorization, BalanceObservation, BudgetState, HoldInfo


def budget_fields(state: BudgetState, shadow: bool = False) -> JSON:
    """A budget's row; `shadow`: the policy shadows it (shadow mode: payments over it go ahead, so `over`,
    what it counts above its limit, may be more than zero)."""
    budget = state.budget
    return {
        "name": budget.name,
        "scope": budget.scope,
        "window": budget.window.text,
        "timezone": budget.window.timezone if budget.window.kind == "calendar" else None,
        "window_start": _iso(state.window_start),
        "resets_at": _iso(state.resets_at),
        "unit": budget.limit.unit,
        "limit": budget.limit.value,
        "spent": state.spent,
        "held": state.held,
        "in_doubt": state.in_doubt,
        "remaining": state.remaining,
        "percent_used": percent(state.used, budget.limit.value),
        "last_used": _iso(state.last_used),
        # What it counts was paid in these units (Lightning in msat): a usd budget counting usdc and sats.
        "paid_in": [{"unit": amount.unit, "amount": amount.value} for amount in state.paid_in],
        "shadow": shadow,
        "over": max(0, state.used - budget.limit.value),
    }


def balance_fields(observation: BalanceObservation, age_s: float, stale_after_s: float) -> JSON:
    amount = observation.amount
    return {
        "key": observation.key,
        "source": observation.source,
        "amount": amount.value if amount is not None else None,
        "unit": amount.unit if amount is not None else None,
        "status": observation.status,
        "seen": _iso(observation.seen),
        "age_s": int(age_s),
        # The same test a paying call meets (`guard.payments.balances.check`): too old, or stale by the upstream's word.
        "stale": age_s > stale_after_s or bool(observation.upstream_stale),
    }


def lapsed_fields(hold: HoldInfo, authorization: Authorization, now: datetime) -> JSON | None:
    """An x402 payment in doubt whose signed authorization is past its `validBefore` with no settlement (it
    can no longer move money; only the chain can say whether it did before), else None."""
    if authorization.valid_before > now:
        return None
    return {
        "hold": hold.id,
        "tool": hold.tool,
        "session": hold.session,
        "amount": hold.amount.value,
        "unit": hold.amount.unit,
        "network": authorization.network,
        "payer": authorization.payer,
        "nonce": authorization.nonce,
        "valid_before": _iso(authorization.valid_before),
        "lapsed_s": int((now - authorization.valid_before).total_seconds()),
    }


def percent(used: int, limit: int) -> int:
    """Whole percent used, rounded down (a budget at 99.9% is not yet at 100%); a zero limit is 100% used."""
    return used * 100 // limit if limit else 100


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None
