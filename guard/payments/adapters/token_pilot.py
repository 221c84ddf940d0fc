"""Token Pilot's `session_budget {sessionId}`: a token budget (unit `tokens`, never money); it never pays.

The result is text content holding JSON: `{sessionId, savedTokens, budgetTokens, burnFraction (0..1),
baseThreshold, effectiveThreshold, eventCount, eventsUntilExhaustion, …}`.

Which number is "remaining": Token Pilot's budget is hook pressure, not context-window occupancy.
`savedTokens` is what its Read hook has suppressed so far in the session, `budgetTokens` the reference
budget that pressure is measured against, and `burnFraction = savedTokens / budgetTokens` (clamped to
0..1). So what is left of the budget is `max(0, budgetTokens - savedTokens)`: the same quantity Token
Pilot divides by the average per event to project `eventsUntilExhaustion`. `budgetTokens` 0 means no
budget is configured (burnFraction then reads 0): no amount, status `no-budget`, never `exhausted`.

Status: `exhausted` when `eventsUntilExhaustion` is 0 (not one more same-shape event fits), when
`burnFraction` ≥ 1, or when nothing remains; otherwise `active`. `eventsUntilExhaustion` is null when
there is no data yet: that is not exhaustion.
"""

from __future__ import annotations

from decimal import Decimal

from guard.core import JSON
from guard.names import known
from guard.payments.adapters._facts import Outcome, Prepared, Refresh
from guard.payments.adapters._json import Unreadable, amount, decimal, result_object
from ledgers import Amount, BalanceObservation

SOURCE = "token-pilot"
KEY_PREFIX = "tokens:"
UNIT = "tokens"
TOOL = "session_budget"


class TokenPilot:
    """Token Pilot's `session_budget` tool (snake or kebab case)."""

    name = "token-pilot"

    tools = frozenset({TOOL})

    def knows(self, tool: str) -> bool:
        return known(tool, self.tools) is not None

    def prepare(self, tool: str, arguments: JSON, meta: JSON | None) -> Prepared:
        return Prepared(pays=False)

    def outcome(self, tool: str, arguments: JSON, meta: JSON | None, result: JSON) -> Outcome:
        if not self.knows(tool):
            return Outcome("no_payment")
        if result.get("isError") is True:
            return Outcome("no_payment", problem="session_budget answered with an error")
        try:
            body = result_object(result)
        except Unreadable as e:
            return Outcome("no_payment", problem=f"session_budget: {e}")
        session = arguments.get("sessionId")
        if not isinstance(session, str) or not session:
            session = body.get("sessionId")
        if not isinstance(session, str) or not session:
            return Outcome("no_payment", problem="session_budget: no sessionId to key the observation by")

        problems: list[str] = []
        remaining: Amount | None = None
        unbudgeted = False
        try:
            budget = amount(body.get("budgetTokens"), "budgetTokens", UNIT, rounding="down")
            saved = amount(body.get("savedTokens"), "savedTokens", UNIT, rounding="up")
        except Unreadable as e:
            problems.append(str(e))
        else:
            unbudgeted = budget.value == 0
            if not unbudgeted:
                remaining = Amount(max(0, budget.value - saved.value), UNIT)
        pressure = _exhausted(body, problems)
        status: str | None = None
        if unbudgeted:
            status = "no-budget"
        elif pressure or (remaining is not None and remaining.value == 0):
            status = "exhausted"
        elif remaining is not None or pressure is False:
            status = "active"
        observation = BalanceObservation(SOURCE, KEY_PREFIX + session, amount=remaining, status=status)
        return Outcome(
            "no_payment",
            observations=(observation,),
            problem="; ".join(f"session_budget: {p}" for p in problems) or None,
        )

    def refresh(self, key: str) -> Refresh | None:
        if key.startswith(KEY_PREFIX) and len(key) > len(KEY_PREFIX):
            return Refresh(TOOL, {"sessionId": key[len(KEY_PREFIX) :]})
        return None


def _exhausted(body: JSON, problems: list[str]) -> bool | None:
    """Whether `eventsUntilExhaustion` is 0 or `burnFraction` ≥ 1; None when neither can be read
    (a null `eventsUntilExhaustion` means no data yet; unreadable fields are noted in `problems`)."""
    readable: list[bool] = []
    for field, exhausted_at in (("eventsUntilExhaustion", None), ("burnFraction", Decimal(1))):
        value = body.get(field)
        if value is None:
            continue
        try:
            number = decimal(value, field)
        except Unreadable as e:
            problems.append(str(e))
            continue
        readable.append(number <= 0 if exhausted_at is None else number >= exhausted_at)
    return any(readable) if readable else None
