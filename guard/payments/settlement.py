"""What happens once a call is forwarded: its answer (or none) decides its hold, and what the answer
reveals is learnt.

- an answer, read by the call's adapter: `paid` settles the hold at what it says was paid: above the
  reservation too (counted whole and flagged: the ledger never says less than what left), at the
  reservation when it names no amount; `not_paid` and `no_payment` void it; `unknown` keeps it in doubt
  (the money may have left). An answer the adapter cannot read is unknown. A payment the answer names (a
  402's hash) is given to the hold, so it cannot be paid twice. Then `learning.learn` stores what the
  answer reveals (observations, quotes, proofs of payments in doubt).
- no answer (`unanswered`): the hold is voided when the tool provably did not run (the upstream's own
  not-run error, or the guard never sent the call), else kept in doubt (a tool error, no answer in time,
  the upstream gone, the call cancelled).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from guard.core import ToolCall, off_loop
from guard.payments.adapters._facts import Outcome
from guard.payments.decision import Bound
from guard.payments.learning import learn
from guard.payments.reading import Readers
from guard.policy.rules import Policy, Who
from ledgers import Amount, HoldStateError, Ledger

logger = logging.getLogger("guard.payments")


@dataclass(frozen=True)
class Settled:
    """What became of a forwarded call's hold: `spent` (when settled), and a `problem` the answer had
    (flagged in the audit trail)."""

    spent: Amount | None
    state: Literal["settled", "voided", "in_doubt", "none"]  # none: the call held nothing
    problem: str | None = None


async def settle(
    ledger: Ledger,
    readers: Readers,
    policy: Policy,
    call: ToolCall,
    who: Who,
    money: Bound,
    result: Any,
    hold: int | None,
) -> Settled:
    """Settle, void or keep in doubt the call's hold as its answer says; then learn what the answer reveals."""
    outcome = readers.outcome(call, money.reading, result)
    settled = await _decide_hold(ledger, call, outcome, hold, money.price)
    await learn(ledger, outcome, policy, who)
    return settled


async def unanswered(ledger: Ledger, hold: int, tool: str, *, not_run: bool = False) -> None:
    """A forwarded payment got no answer: void when the tool did not run, else keep it in doubt."""
    try:
        if not_run:
            await off_loop(ledger.void, hold)
        else:
            logger.warning("payment by %s is in doubt (hold %d): no result from the upstream", tool, hold)
            await off_loop(ledger.mark_in_doubt, hold)
    except HoldStateError:
        pass  # already settled or voided: the answer was read before the failure


async def _decide_hold(
    ledger: Ledger, call: ToolCall, outcome: Outcome, hold: int | None, price: Amount | None
) -> Settled:
    if hold is not None and outcome.payment_id is not None and outcome.state in ("paid", "unknown"):
        # The answer names the payment (a 402's hash): no second payment of it while this one is open.
        if not await off_loop(ledger.name_payment, hold, outcome.payment_id):
            logger.warning("hold %d: payment %s is already held by another hold", hold, outcome.payment_id)
    if hold is None or price is None:
        return Settled(None, "none", outcome.problem)
    if outcome.state == "paid":
        spent, problem = outcome.spent, outcome.problem
        if spent is None:
            spent = price  # the answer does not say: count the whole reservation
        await off_loop(ledger.settle, hold, spent)
        over = spent.above(price)
        if over is not None:
            # The ledger never says less than what left: all of it is counted, and flagged.
            above = f"over reservation: the upstream paid {spent}, {over} more than the {price} reserved"
            problem = f"{above}; {problem}" if problem else above
        if problem:
            logger.warning("%s: %s", call.name, problem)
        return Settled(spent, "settled", problem)
    if outcome.state in ("not_paid", "no_payment"):
        await off_loop(ledger.void, hold)
        return Settled(None, "voided", outcome.problem)
    logger.warning("payment by %s is in doubt (hold %d): %s", call.name, hold, outcome.problem or "outcome unknown")
    await off_loop(ledger.mark_in_doubt, hold)
    return Settled(None, "in_doubt", outcome.problem)
