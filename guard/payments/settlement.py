"""What happens once a call is forwarded: its answer (or none) decides its hold, and what the answer
reveals is learnt.

- an answer, read by the call's adapter: `paid` settles the hold at what it says was paid: above the
  reservation too (counted whole and flagged: the ledger never says less than what left), at the
  reservation when it names no amount; `not_paid` and `no_payment` void it; `unknown` keeps it in doubt
  (the money may have left). An answer the adapter cannot read is unknown. A payment the answer names (a
  402's hash) is given to the hold, so it cannot be paid twice. All of it, with what the answer reveals
  that needs no reading first (`learning.stored_as_is`: observations, quotes) and the call's event, is
  one ledger transaction (`Ledger.conclude`): the paying call's second and last durable write. Then
  `learning.reconcile_after` holds proofs of payments in doubt and money balances against the ledger.
- no answer (`unanswered`): the hold is voided when the tool provably did not run (the upstream's own
  not-run error, or the guard never sent the call), else kept in doubt (a tool error, no answer in time,
  the upstream gone, the call cancelled).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from guard.core import ToolCall, off_loop
from guard.payments.adapters._facts import Outcome
from guard.payments.decision import Bound
from guard.payments.learning import reconcile_after, stored_as_is
from guard.payments.reading import Readers
from guard.policy.rules import Policy, Who
from ledgers import Amount, AnswerStep, CallRecord, HoldStateError, Ledger

logger = logging.getLogger("guard.payments")


@dataclass(frozen=True)
class Settled:
    """What became of a forwarded call's hold: `spent` (when settled), and a `problem` the answer had
    (flagged in the audit trail)."""

    spent: Amount | None
    state: Literal["settled", "voided", "in_doubt", "none"]  # none: the call held nothing
    problem: str | None = None
    event: CallRecord | None = None  # the call's event, as `settle` made it
    recorded: bool = False  # ...written to the ledger with the settlement (else the audit trail writes it)


async def settle(
    ledger: Ledger,
    readers: Readers,
    policy: Policy,
    call: ToolCall,
    who: Who,
    money: Bound,
    result: Any,
    hold: int | None,
    event: Callable[[Settled], CallRecord] | None = None,
) -> Settled:
    """Settle, void or keep in doubt the call's hold as its answer says, storing what the answer reveals
    and the call's event (`event` makes it from the settlement) in the same transaction; then reconcile
    what needs the settled ledger. A call that holds nothing and reveals nothing writes nothing: its event
    is returned unrecorded (`Settled.recorded`), for the audit trail's batches."""
    outcome = readers.outcome(call, money.reading, result)
    settled, step, paid = _decide_hold(call, outcome, hold, money.price)
    observations, quotes = stored_as_is(outcome)
    record = event(settled) if event is not None else None
    named = None
    if hold is not None and outcome.payment_id is not None and outcome.state in ("paid", "unknown"):
        named = outcome.payment_id  # the answer names the payment (a 402's hash): no second payment of it
    recorded = hold is not None or bool(observations or quotes)
    if recorded:
        conclude = partial(
            ledger.conclude, hold, step, paid, payment_id=named, observations=observations, quotes=quotes, event=record
        )
        if not await off_loop(conclude):
            logger.warning("hold %d: payment %s is already held by another hold", hold, named)
    await reconcile_after(ledger, outcome, policy, who)
    return Settled(settled.spent, settled.state, settled.problem, record, recorded and record is not None)


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


def _decide_hold(
    call: ToolCall, outcome: Outcome, hold: int | None, price: Amount | None
) -> tuple[Settled, AnswerStep | None, Amount | None]:
    """What the answer does to the hold: the settlement, the step, and what was paid (for `settle`)."""
    if hold is None or price is None:
        return Settled(None, "none", outcome.problem), None, None
    if outcome.state == "paid":
        spent, problem = outcome.spent, outcome.problem
        if spent is None:
            spent = price  # the answer does not say: count the whole reservation
        over = spent.above(price)
        if over is not None:
            # The ledger never says less than what left: all of it is counted, and flagged.
            above = f"over reservation: the upstream paid {spent}, {over} more than the {price} reserved"
            problem = f"{above}; {problem}" if problem else above
        if problem:
            logger.warning("%s: %s", call.name, problem)
        return Settled(spent, "settled", problem), "settle", spent
    if outcome.state in ("not_paid", "no_payment"):
        return Settled(None, "voided", outcome.problem), "void", None
    logger.warning("payment by %s is in doubt (hold %d): %s", call.name, hold, outcome.problem or "outcome unknown")
    return Settled(None, "in_doubt", outcome.problem), "mark_in_doubt", None
