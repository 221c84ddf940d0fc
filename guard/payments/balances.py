"""Whether the balances a paying call draws on can pay it, and keeping what the guard knows of them fresh.

A paying call depends on the balances its adapter names (a P402 session, a wallet). It is denied when one
is dead (exhausted, expired, ended, revoked, not found), below the price, or stale: older than
`balances.stale_after`, or marked stale by the upstream itself. With `on_stale: refresh` the guard first
asks the upstream (the adapter names the call) and decides on the answer. A balance never seen says
nothing: the budgets decide.

On a schedule (`refresh_due`), every known balance older than `balances.refresh_every` is asked again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from guard.core import SessionLink, off_loop
from guard.payments.adapters._facts import Adapter
from guard.payments.learning import ask
from guard.payments.reading import Readers, Reading
from guard.policy.model import seconds
from guard.policy.rules import Denial, Policy, Who
from guard.text import rough_duration
from ledgers import Amount, BalanceObservation, Ledger, LedgerError, UnitMismatch

logger = logging.getLogger("guard.payments")

# Observation statuses that mean the balance cannot pay.
DEAD = frozenset({"exhausted", "expired", "ended", "revoked", "not-found"})


async def check(
    ledger: Ledger, policy: Policy, reading: Reading, price: Amount, who: Who, link: SessionLink | None
) -> Denial | None:
    """A denial when a balance this call depends on cannot pay `price` (refreshing it first if allowed)."""
    if reading.prepared is None or reading.adapter is None:
        return None
    stale_after = seconds(policy.spec.balances.stale_after)
    for key in reading.prepared.depends_on:
        found = await off_loop(ledger.latest, key)
        if _stale(found, stale_after) and policy.spec.balances.on_stale == "refresh" and link is not None:
            if await refresh(ledger, reading.adapter, key, link, policy, who):
                found = await off_loop(ledger.latest, key)
        if found is None:
            continue  # nothing known that says no: the budgets decide
        observation, age = found
        if _stale(found, stale_after):
            why = (
                "the upstream marks it stale"
                if observation.upstream_stale
                else f"older than {rough_duration(stale_after)}"
            )
            return Denial(
                "balances.stale_after",
                f"the balance {key} was seen {rough_duration(age)} ago and is stale ({why}); the guard will not pay"
                " on it",
                kind="stale_balance",
                balance_key=key,
            )
        if observation.status in DEAD:
            return Denial("balances", f"the balance {key} is {observation.status}", kind="balance", balance_key=key)
        if observation.amount is not None and _below(observation.amount, price):
            return Denial(
                "balances",
                f"the balance {key} has {observation.amount} left, and this call may cost {price}",
                remaining=observation.amount.value,
                unit=observation.amount.unit,
                kind="balance",
                balance_key=key,
            )
    return None


async def refresh(ledger: Ledger, adapter: Adapter, key: str, link: SessionLink, policy: Policy, who: Who) -> bool:
    """Ask the upstream for a fresh observation of `key` and store it. True if it answered."""
    how = adapter.refresh(key)
    return how is not None and await ask(ledger, adapter, how, link, policy, who, key)


async def refresh_due(
    ledger: Ledger, readers: Readers, policy: Policy, links: Callable[[], list[SessionLink]], server: str
) -> int:
    """Refresh every known balance older than `refresh_every`, one at a time, through the first live
    session's link; return how many answered."""
    every = policy.spec.balances.refresh_every
    if every is None:
        return 0
    older_than = seconds(every)
    done = 0
    for observation, age in await off_loop(ledger.observed):
        if age < older_than:
            continue
        adapter = readers.refresher(observation.key)
        live = links()
        if adapter is None or not live:
            continue
        try:
            if await refresh(ledger, adapter, observation.key, live[0], policy, Who("", None, server)):
                done += 1
        except LedgerError:
            logger.exception("could not store a refreshed balance for %s", observation.key)
    return done


def _stale(found: tuple[BalanceObservation, float] | None, stale_after: float) -> bool:
    """Missing, older than `stale_after`, or marked stale by the upstream itself."""
    if found is None:
        return True
    observation, age = found
    return age > stale_after or bool(observation.upstream_stale)


def _below(balance: Amount, price: Amount) -> bool:
    """Whether `balance` is less than `price`; amounts that do not compare (credits and sat) are not."""
    try:
        return balance.to(price.unit, rounding="down").value < price.value
    except UnitMismatch:
        return False
