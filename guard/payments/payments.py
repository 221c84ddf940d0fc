"""The money in calls: which adapter reads a call, its price bound, the balances it depends on, and
what its answer says was paid. Adapters are pure; this is where their facts meet the ledger.

- price, in order: the call's own (an invoice, `amountSats`, an x402 payment) → the policy's `price` /
  `price_from` → a live quote for the resource (with none, the guard asks the upstream itself when the
  adapter names a call that quotes without paying: `l402-fetch-preview`) → `max_price` → refused (no
  price, no pay). The hold records which of these bounded it (`priced_by`);
- balances a paying call depends on (a P402 session, a wallet): denied when exhausted, expired or
  revoked, when below the price, or when stale and `on_stale: deny`; with `on_stale: refresh` the
  guard first asks the upstream itself (the adapter names the call) and decides on the answer;
- after the answer: observations and quotes are stored (quotes keyed by `public_url`, until they
  expire); the hold is settled at what the answer says was paid — above the reservation too: then it
  is counted whole and flagged (the ledger never says less than what left) — voided when provably
  nothing was, kept in doubt when unknown. An answer that cannot be read settles at the reserved amount
  and is flagged. An answer that proves an in-doubt payment was made (a credential stored for its
  payment hash) settles that hold: reconciliation needs no human then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread

from guard.core import SessionLink, ToolCall
from guard.errors import PriceUnknown, UpstreamError
from guard.names import folded
from guard.payments.adapters._facts import Adapter, Outcome, Prepared, Refresh, public_url
from guard.policy.rules import Denial, Policy, Who, seconds
from ledgers import MONEY_BALANCES, Amount, BalanceObservation, CallRecord, Ledger, LedgerError, UnitMismatch

logger = logging.getLogger("guard.payments")
T = TypeVar("T")

# Observation statuses that mean the balance cannot pay.
DEAD = frozenset({"exhausted", "expired", "ended", "revoked", "not-found"})


@dataclass(frozen=True)
class Reading:
    """An adapter's view of one call: who reads it and what it said before forwarding."""

    adapter: Adapter | None
    prepared: Prepared | None

    @property
    def pays(self) -> bool | None:
        """True/False when an adapter knows; None when the policy's `pays` must decide."""
        return self.prepared.pays if self.prepared is not None else None


@dataclass(frozen=True)
class Price:
    """A paying call's price bound, and what set it: `call` (the call itself: an invoice, `amountSats`,
    an x402 payment), `policy` (`price` / `price_from`), `quote` (a price the upstream named), or
    `max_price` (the policy's cap, when nothing named a price)."""

    amount: Amount
    by: str


@dataclass(frozen=True)
class Settled:
    spent: Amount | None
    state: str  # settled | voided | in_doubt | none
    problem: str | None = None


class Payments:
    """Adapters (the upstream family's, and x402 which any server may speak) and the ledger."""

    def __init__(
        self, ledger: Ledger, adapters: Sequence[Adapter], x402: Adapter | None = None, server: str = "upstream"
    ) -> None:
        self._ledger = ledger
        self._server = server
        self._adapters = list(adapters)
        self._x402 = x402

    # before forwarding

    def read(self, call: ToolCall) -> Reading:
        """The adapter that reads this call. An x402 payment in `_meta` wins: any server may speak it."""
        if self._x402 is not None:
            prepared = self._x402.prepare(call.name, call.arguments, call.meta)
            if prepared.pays:
                return Reading(self._x402, prepared)
        variant = folded(call.name)
        for adapter in self._adapters:
            if adapter.knows(call.name):
                return Reading(adapter, adapter.prepare(call.name, call.arguments, call.meta))
            if (known := next((t for t in adapter.tools if folded(t) == variant), None)) is not None:
                # An upstream that normalises names may run it as `known`, a tool that pays: never unpriced.
                why = f"{call.name!r} is a variant of {adapter.name}'s tool {known!r}: call it by its exact name"
                return Reading(adapter, Prepared(pays=True, refuse=why))
        return Reading(None, None)

    async def price(self, policy: Policy, call: ToolCall, reading: Reading, link: SessionLink | None) -> Price:
        """The most this paying call can spend (asking the upstream through `link` for a quote when the
        adapter says how and none is live).

        Raises:
            PriceUnknown: no bound at all (no price, no pay)."""
        prepared = reading.prepared
        if prepared is not None and prepared.price is not None:
            return Price(prepared.price, "call")
        fixed = policy.fixed_price(call.name, call.arguments)
        if fixed is not None:
            return Price(fixed, "policy")
        if prepared is not None and prepared.quote_for is not None:
            key = public_url(prepared.quote_for)
            quote = await _db(self._ledger.quote, key)
            how = prepared.quote_with
            if quote is None and how is not None and link is not None and reading.adapter is not None:
                if await self._ask(reading.adapter, how, link, policy, _who(call, self._server), f"the price of {key}"):
                    quote = await _db(self._ledger.quote, key)
            if quote is not None:
                return Price(quote.amount, "quote")
        return Price(policy.price(call.name, call.arguments), "max_price")

    async def check_balances(
        self, policy: Policy, call: ToolCall, reading: Reading, price: Amount, link: SessionLink | None
    ) -> Denial | None:
        """A denial when a balance this call depends on cannot pay it (refreshing first if allowed)."""
        if reading.prepared is None or reading.adapter is None:
            return None
        stale_after = seconds(policy.spec.balances.stale_after)
        for key in reading.prepared.depends_on:
            found = await _db(self._ledger.latest, key)
            if _stale(found, stale_after) and policy.spec.balances.on_stale == "refresh" and link is not None:
                if await self.refresh(reading.adapter, key, link, policy, _who(call, self._server)):
                    found = await _db(self._ledger.latest, key)
            if found is None:
                continue  # nothing known that says no: the budgets decide
            observation, age = found
            if _stale(found, stale_after):
                why = (
                    "the upstream marks it stale" if observation.upstream_stale else f"older than {_words(stale_after)}"
                )
                return Denial(
                    "balances.stale_after",
                    f"the balance {key} was seen {_words(age)} ago and is stale ({why}); the guard will not pay on it",
                )
            if observation.status in DEAD:
                return Denial("balances", f"the balance {key} is {observation.status}")
            if observation.amount is not None and _below(observation.amount, price):
                return Denial(
                    "balances",
                    f"the balance {key} has {observation.amount} left, and this call may cost {price}",
                    remaining=observation.amount.value,
                    unit=observation.amount.unit,
                )
        return None

    async def refresh(self, adapter: Adapter, key: str, link: SessionLink, policy: Policy, who: Who) -> bool:
        """Ask the upstream for a fresh observation of `key`; store what it says. True if it answered."""
        how = adapter.refresh(key)
        return how is not None and await self._ask(adapter, how, link, policy, who, key)

    async def _ask(
        self, adapter: Adapter, how: Refresh, link: SessionLink, policy: Policy, who: Who, what: str
    ) -> bool:
        """Make the guard's own call `how` upstream and store what its answer reveals (observations,
        quotes). True if it answered."""
        try:
            result = await link.call(how.tool, how.arguments)
        except UpstreamError as exc:
            logger.warning("asking for %s with %s failed: %s", what, how.tool, exc.message)
            return False
        try:
            outcome = adapter.outcome(how.tool, how.arguments, None, result)
        except Exception:  # an adapter's bug: nothing learned, the caller falls back (to max_price, say)
            logger.exception("could not read the answer of %s", how.tool)
            return False
        await self._store(outcome, policy, who)
        if outcome.problem:
            logger.warning("asking for %s with %s: %s", what, how.tool, outcome.problem)
        return True

    # after the answer

    async def settle(
        self, policy: Policy, call: ToolCall, reading: Reading, result: Any, hold: int | None, price: Amount | None
    ) -> Settled:
        """Settle, void or keep in doubt the hold; then store what the answer reveals."""
        outcome = self._outcome(call, reading, result)
        settled = await self._finish(call, outcome, hold, price)
        await self._store(outcome, policy, _who(call, self._server))
        return settled

    async def _finish(self, call: ToolCall, outcome: Outcome, hold: int | None, price: Amount | None) -> Settled:
        if hold is not None and outcome.payment_id is not None and outcome.state in ("paid", "unknown"):
            # The answer names the payment (a 402's hash): no second payment of it while this one is open.
            if not await _db(self._ledger.name_payment, hold, outcome.payment_id):
                logger.warning("hold %d: payment %s is already held by another hold", hold, outcome.payment_id)
        if hold is None or price is None:
            return Settled(None, "none", outcome.problem)
        if outcome.state == "paid":
            spent, problem = outcome.spent, outcome.problem
            if spent is None:
                spent = price  # the answer does not say: count the whole reservation
            await _db(self._ledger.settle, hold, spent)
            over = spent.above(price)
            if over is not None:
                # The ledger never says less than what left: all of it is counted, and flagged.
                above = f"over reservation: the upstream paid {spent}, {over} more than the {price} reserved"
                problem = f"{above}; {problem}" if problem else above
            if problem:
                logger.warning("%s: %s", call.name, problem)
            return Settled(spent, "settled", problem)
        if outcome.state in ("not_paid", "no_payment"):
            await _db(self._ledger.void, hold)
            return Settled(None, "voided", outcome.problem)
        logger.warning("payment by %s is in doubt (hold %d): %s", call.name, hold, outcome.problem or "outcome unknown")
        await _db(self._ledger.mark_in_doubt, hold)
        return Settled(None, "in_doubt", outcome.problem)

    def _outcome(self, call: ToolCall, reading: Reading, result: Any) -> Outcome:
        try:
            return self._read_outcome(call, reading, result)
        except Exception:  # an adapter's bug must not lose the hold: it stays counted, in doubt
            logger.exception("could not read the answer to %s", call.name)
            return Outcome("unknown", problem="the guard could not read the upstream's answer")

    def _read_outcome(self, call: ToolCall, reading: Reading, result: Any) -> Outcome:
        if not isinstance(result, dict):
            return Outcome("unknown", problem="the upstream's result is not an object")
        if self._x402 is not None:
            x402 = self._x402.outcome(call.name, call.arguments, call.meta, result)
            if reading.adapter is self._x402 or x402.state != "no_payment" or x402.quotes:
                return x402
        if reading.adapter is not None:
            return reading.adapter.outcome(call.name, call.arguments, call.meta, result)
        # No adapter knows this tool: a policy-priced call counts its price when it answers.
        return Outcome("paid")

    async def _store(self, outcome: Outcome, policy: Policy, who: Who) -> None:
        for payment in outcome.proven_paid:
            await self._reconcile(payment)
        for observation in outcome.observations:
            await self._explain(observation, policy, who)
            await _db(self._ledger.observe, observation)
        for quote in outcome.quotes:
            # Keyed without credentials, query or fragment (which may carry API keys and tokens).
            remember = partial(self._ledger.remember_quote, expires=quote.expires, payment_id=quote.payment_id)
            await _db(remember, public_url(quote.resource), quote.amount)

    async def _explain(self, observation: BalanceObservation, policy: Policy, who: Who) -> None:
        """Compare a balance with the last one seen: a drop the guard's own payments do not explain is
        spend seen only in the balance (another route, a fee): recorded, and counted against budgets
        with `include_external`. A rise is a top-up: recorded, never as negative spend."""
        if observation.amount is None or not observation.key.startswith(MONEY_BALANCES):
            return
        found = await _db(self._ledger.latest, observation.key)
        if found is None or found[0].amount is None or found[0].seen is None:
            return
        before = found[0].amount
        try:
            now = observation.amount.to(before.unit, rounding="down")
            explained = sum(a.to(before.unit, rounding="up").value for a in await self._spent_from(found[0]))
        except UnitMismatch:
            return
        drop = before.value - now.value
        explained -= await self._settle_by_balance(found[0], drop, explained)
        base = {
            "tool": observation.source,
            "session": who.session or None,
            "identity": who.identity,
            "server": who.server,
        }
        if drop < 0:
            rise = Amount(-drop, before.unit)
            reason = f"{observation.key} rose by {rise} (a top-up)"
            await _db(self._ledger.record, CallRecord(decision="topup", reason=reason, **base))  # type: ignore[arg-type]
            return
        external = drop - explained
        if external <= 0:
            return
        spent = Amount(external, before.unit)
        budgets = [b for b in policy.external_budgets(who) if _comparable(spent, b.limit)]
        hold = await _db(
            partial(
                self._ledger.charge,
                budgets,
                spent,
                balance_key=observation.key,
                session=who.session or None,
                tool=observation.source,
                server=who.server,
            )
        )
        reason = (
            f"{observation.key} fell by {Amount(drop, before.unit)}; the guard's payments explain "
            f"{Amount(explained, before.unit)}: {spent} was spent another way"
        )
        logger.warning("external spend: %s", reason)
        record = CallRecord(decision="external", reason=reason, hold_id=hold, spent=spent, **base)  # type: ignore[arg-type]
        await _db(self._ledger.record, record)

    async def _settle_by_balance(self, previous: BalanceObservation, drop: int, explained: int) -> int:
        """Payments in doubt from this balance, proven by its drop: a drop of exactly everything counted
        means they left (settled); a drop of only what was settled means they did not (voided). Returns
        how much of `explained` was in-doubt money now voided."""
        assert previous.seen is not None and previous.amount is not None
        unit = previous.amount.unit
        doubtful = [
            h
            for h in await _db(self._ledger.open_holds, "in_doubt")
            if h.balance_key == previous.key and h.created >= previous.seen
        ]
        try:
            in_doubt = sum(h.amount.to(unit, rounding="up").value for h in doubtful)
        except UnitMismatch:
            return 0
        if not doubtful or drop not in (explained, explained - in_doubt):
            return 0
        paid = drop == explained
        for hold in doubtful:
            await _db(self._ledger.resolve, hold.id, hold.amount if paid else Amount(0, hold.amount.unit))
            what = "left (settled)" if paid else "did not leave (voided)"
            record = CallRecord(
                tool=hold.tool or "?",
                decision="resolve",
                session=hold.session,
                identity=hold.identity,
                server=hold.server,
                reason=f"hold {hold.id} reconciled: {previous.key} shows the payment {what}",
                hold_id=hold.id,
                spent=hold.amount if paid else None,
            )
            await _db(self._ledger.record, record)
        return 0 if paid else in_doubt

    async def _spent_from(self, previous: BalanceObservation) -> list[Amount]:
        assert previous.seen is not None
        return await _db(self._ledger.spent_from, previous.key, previous.seen)

    async def _reconcile(self, payment: str) -> None:
        """An answer proves `payment` was made: a hold of it still in doubt settles at its amount."""
        hold = await _db(self._ledger.hold_for_payment, payment)
        if hold is None or hold.phase != "in_doubt":
            return
        await _db(self._ledger.resolve, hold.id, hold.amount)
        logger.info("hold %d (payment %s) was in doubt; the upstream shows it paid: settled", hold.id, payment)
        record = CallRecord(
            tool=hold.tool or "?",
            decision="resolve",
            session=hold.session,
            identity=hold.identity,
            server=hold.server,
            reason=f"hold {hold.id} reconciled: the upstream shows payment {payment} was made",
            hold_id=hold.id,
            spent=hold.amount,
        )
        await _db(self._ledger.record, record)

    # on a schedule

    async def refresh_stale(self, policy: Policy, links: Callable[[], list[SessionLink]]) -> int:
        """Refresh every known balance older than `refresh_every`, one at a time; return how many."""
        every = policy.spec.balances.refresh_every
        if every is None:
            return 0
        older_than = seconds(every)
        done = 0
        for observation, age in await _db(self._ledger.observed):
            if age < older_than:
                continue
            adapter = next((a for a in self._adapters if a.refresh(observation.key) is not None), None)
            live = links()
            if adapter is None or not live:
                continue
            try:
                if await self.refresh(adapter, observation.key, live[0], policy, Who("", None, self._server)):
                    done += 1
            except LedgerError:
                logger.exception("could not store a refreshed balance for %s", observation.key)
        return done


def _who(call: ToolCall, server: str) -> Who:
    return Who(call.session.id, call.session.identity, server)


def _comparable(amount: Amount, limit: Amount) -> bool:
    try:
        amount.to(limit.unit, rounding="up")
    except UnitMismatch:
        return False
    return True


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


def _words(seconds: float) -> str:
    whole = int(seconds)
    if whole < 120:
        return f"{whole}s"
    if whole < 7200:
        return f"{whole // 60}m"
    return f"{whole // 3600}h"


async def _db(function: Callable[..., T], *args: Any) -> T:
    return await anyio.to_thread.run_sync(function, *args)


__all__ = ["DEAD", "Payments", "Price", "PriceUnknown", "Reading", "Settled"]
