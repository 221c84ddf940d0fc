"""Holding what answers reveal against what the guard counted.

- a proof that a payment was made (a credential stored for its payment hash) settles its hold in doubt;
- a money balance (`BalanceObservation.money`: a wallet, a P402 session) compared with the last one seen:
  payments in doubt from it are settled when it fell by exactly everything counted, voided when it fell
  by only what was settled; a fall the guard's payments do not explain is spend seen only in the
  balance (external: recorded, and counted against budgets with `include_external`); a rise is a
  top-up (recorded, never as negative spend).

Each resolution is written with its call event in one ledger transaction (`Ledger.resolve(event=...)`).
"""

from __future__ import annotations

import logging
from functools import partial

from guard.core import off_loop
from guard.policy.rules import Policy, Who, counting
from ledgers import Amount, BalanceObservation, CallRecord, HoldInfo, Ledger, UnitMismatch

logger = logging.getLogger("guard.payments")


async def settle_proven(ledger: Ledger, payment: str) -> None:
    """An answer proves `payment` was made: a hold of it still in doubt settles at its amount."""
    hold = await off_loop(ledger.hold_for_payment, payment)
    if hold is None or hold.phase != "in_doubt":
        return
    event = resolution(hold, f"hold {hold.id} reconciled: the upstream shows payment {payment} was made", hold.amount)
    await off_loop(partial(ledger.resolve, hold.id, hold.amount, event=event))
    logger.info("hold %d (payment %s) was in doubt; the upstream shows it paid: settled", hold.id, payment)


async def explain(ledger: Ledger, observation: BalanceObservation, policy: Policy, who: Who) -> None:
    """Compare a money balance with the last one seen (before `observation` is stored): resolve the
    payments in doubt its move proves, and record what the guard's payments do not explain."""
    if observation.amount is None or not observation.money:
        return
    found = await off_loop(ledger.latest, observation.key)
    if found is None or found[0].amount is None or found[0].seen is None:
        return
    previous, before = found[0], found[0].amount
    try:
        now = observation.amount.to(before.unit, rounding="down")
        counted = await off_loop(ledger.spent_from, previous.key, previous.seen)
        explained = sum(amount.to(before.unit, rounding="up").value for amount in counted)
    except UnitMismatch:
        return
    drop = before.value - now.value
    explained -= await _settle_by_balance(ledger, previous, drop, explained)
    event = partial(
        CallRecord,
        tool=observation.source,
        session=who.session or None,
        identity=who.identity,
        server=who.server,
        balance_key=observation.key,
    )
    if drop < 0:
        reason = f"{observation.key} rose by {Amount(-drop, before.unit)} (a top-up)"
        await off_loop(ledger.record, event(decision="topup", reason=reason))
        return
    external = drop - explained
    if external <= 0:
        return
    spent = Amount(external, before.unit)
    charge = partial(
        ledger.charge,
        counting(policy.external_budgets(who), spent, policy.rates),
        spent,
        rates=policy.rates,
        balance_key=observation.key,
        session=who.session or None,
        tool=observation.source,
        server=who.server,
    )
    hold = await off_loop(charge)
    reason = (
        f"{observation.key} fell by {Amount(drop, before.unit)}; the guard's payments explain "
        f"{Amount(explained, before.unit)}: {spent} was spent another way"
    )
    logger.warning("external spend: %s", reason)
    await off_loop(ledger.record, event(decision="external", reason=reason, hold_id=hold, spent=spent))


async def _settle_by_balance(ledger: Ledger, previous: BalanceObservation, drop: int, explained: int) -> int:
    """Payments in doubt from this balance since it was last seen, proven by its drop: a drop of exactly
    everything counted means they left (settled); a drop of only what was settled means they did not
    (voided). Returns how much of `explained` was in-doubt money now voided."""
    assert previous.seen is not None and previous.amount is not None
    unit = previous.amount.unit
    doubtful = [
        hold
        for hold in await off_loop(ledger.open_holds, "in_doubt")
        if hold.balance_key == previous.key and hold.created >= previous.seen
    ]
    try:
        in_doubt = sum(hold.amount.to(unit, rounding="up").value for hold in doubtful)
    except UnitMismatch:
        return 0
    if not doubtful or drop not in (explained, explained - in_doubt):
        return 0
    paid = drop == explained
    what = "left (settled)" if paid else "did not leave (voided)"
    for hold in doubtful:
        shows = f"hold {hold.id} reconciled: {previous.key} shows the payment {what}"
        event = resolution(hold, shows, hold.amount if paid else None, balance_key=previous.key)
        actual = hold.amount if paid else Amount(0, hold.amount.unit)
        await off_loop(partial(ledger.resolve, hold.id, actual, event=event))
    return 0 if paid else in_doubt


def resolution(hold: HoldInfo, reason: str, spent: Amount | None, *, balance_key: str | None = None) -> CallRecord:
    """The call event that goes with resolving a hold in doubt (written in the resolution's transaction):
    `spent` is what left (None: nothing did), `reason` says what showed it."""
    return CallRecord(
        tool=hold.tool or "?",
        decision="resolve",
        session=hold.session,
        identity=hold.identity,
        server=hold.server,
        reason=reason,
        hold_id=hold.id,
        spent=spent,
        balance_key=balance_key,
    )
