"""What an answer reveals, stored: the agent's answers and the guard's own calls alike.

- payments it proves were made settle their holds in doubt (`reconcile.settle_proven`);
- balance observations are held against the last one seen (`reconcile.explain`), then stored;
- quotes (a price named before paying) are remembered until they expire, keyed by `public_url` (no
  credentials, query or fragment: where API keys and tokens travel) and, when the answer names the
  invoice's payment hash, by `payment_key` too: 402-mcp caches that challenge, and a later `l402-pay
  {paymentHash}` pays exactly it. One hash is one invoice: of two prices named for it, the higher is kept.
  An x402 PaymentRequired is also remembered by the tool that answered it (`x402_tool_key`): while it
  lasts, that tool's calls without a payment are known to move nothing (`decision.bound`).

What needs no reading of the ledger (observations of balances that are not money, quotes) is stored as it
is: with a paying call's settlement and event, in its one transaction (`stored_as_is`, `Ledger.conclude`).
Proofs and money balances are held against the ledger as settled, after it (`reconcile_after`).

`ask` is the guard's own call upstream (a balance refresh, a price preview), through the session's
`SessionLink`, learnt from like any answer.
"""

from __future__ import annotations

import logging
from functools import partial

from guard.core import SessionLink, off_loop
from guard.errors import UpstreamError
from guard.payments import reconcile
from guard.payments.adapters._facts import Adapter, Outcome, Quote, Refresh, public_url
from guard.policy.rules import Policy, Who
from ledgers import BalanceObservation, Ledger, NamedQuote

logger = logging.getLogger("guard.payments")


def payment_key(payment_id: str) -> str:
    """The quote key of a payment (an invoice's payment hash); no URL key starts this way."""
    return f"payment:{payment_id}"


def x402_tool_key(tool: str) -> str:
    """The quote key of a tool that answered with an x402 PaymentRequired: while it lasts, a call to the tool
    without an x402 payment is known to move nothing. No URL or payment key starts this way."""
    return f"x402-tool:{tool}"


async def learn(ledger: Ledger, outcome: Outcome, policy: Policy, who: Who) -> None:
    """Store what `outcome` reveals (after reconciling it with what the guard counted)."""
    observations, quotes = stored_as_is(outcome)
    if observations or quotes:
        await off_loop(partial(ledger.conclude, None, observations=observations, quotes=quotes))
    await reconcile_after(ledger, outcome, policy, who)


def stored_as_is(outcome: Outcome) -> tuple[list[BalanceObservation], list[NamedQuote]]:
    """What of `outcome` is stored as it is, reading nothing first: the observations no reconciliation
    reads (every one but a money balance), and the quotes under each of their keys."""
    observations = [o for o in outcome.observations if not _reconciled(o)]
    return observations, [named for quote in outcome.quotes for named in _named(quote)]


async def reconcile_after(ledger: Ledger, outcome: Outcome, policy: Policy, who: Who) -> None:
    """What of `outcome` is held against the ledger as it is (its call's hold settled): payments it proves
    settle their holds in doubt; a money balance is compared with the last one seen, then stored."""
    for payment in outcome.proven_paid:
        await reconcile.settle_proven(ledger, payment)
    for observation in outcome.observations:
        if _reconciled(observation):
            await reconcile.explain(ledger, observation, policy, who)
            await off_loop(ledger.observe, observation)


def _reconciled(observation: BalanceObservation) -> bool:
    """A money balance with an amount: `reconcile.explain` holds it against the last one before it is stored."""
    return observation.money and observation.amount is not None


def _named(quote: Quote) -> list[NamedQuote]:
    """A quote under each of its keys: its URL's public form, the x402 tool's, its payment's (one invoice:
    of two prices named for it, the higher stays)."""
    named = partial(NamedQuote, amount=quote.amount, expires=quote.expires, payment_id=quote.payment_id)
    keys = []
    if quote.resource is not None:
        keys.append(named(public_url(quote.resource)))
    if quote.x402_tool is not None:
        keys.append(named(x402_tool_key(quote.x402_tool)))
    if quote.payment_id is not None:
        keys.append(named(payment_key(quote.payment_id), keep_higher=True))
    return keys


async def ask(
    ledger: Ledger, adapter: Adapter, how: Refresh, link: SessionLink, policy: Policy, who: Who, what: str
) -> bool:
    """Make the guard's own call `how` upstream for `what` and learn from its answer. True if it answered
    (and the adapter could read it)."""
    try:
        result = await link.call(how.tool, how.arguments)
    except UpstreamError as exc:
        logger.warning("asking for %s with %s failed: %s", what, how.tool, exc.message)
        return False
    try:
        outcome = adapter.outcome(how.tool, how.arguments, None, result)
    except Exception:  # an adapter's bug: nothing learnt, the caller falls back (to max_price, say)
        logger.exception("could not read the answer of %s", how.tool)
        return False
    await learn(ledger, outcome, policy, who)
    if outcome.problem:
        logger.warning("asking for %s with %s: %s", what, how.tool, outcome.problem)
    return True
