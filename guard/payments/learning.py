"""What an answer reveals, stored: the agent's answers and the guard's own calls alike.

- payments it proves were made settle their holds in doubt (`reconcile.settle_proven`);
- balance observations are held against the last one seen (`reconcile.explain`), then stored;
- quotes (a price named before paying) are remembered until they expire, keyed by `public_url` (no
  credentials, query or fragment: where API keys and tokens travel) and, when the answer names the
  invoice's payment hash, by `payment_key` too: 402-mcp caches that challenge, and a later `l402-pay
  {paymentHash}` pays exactly it. One hash is one invoice: of two prices named for it, the higher is kept.
  An x402 PaymentRequired is also remembered by the tool that answered it (`x402_tool_key`): while it
  lasts, that tool's calls without a payment are known to move nothing (`decision.bound`).

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
from ledgers import Amount, Ledger, UnitMismatch

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
    for payment in outcome.proven_paid:
        await reconcile.settle_proven(ledger, payment)
    for observation in outcome.observations:
        await reconcile.explain(ledger, observation, policy, who)
        await off_loop(ledger.observe, observation)
    for quote in outcome.quotes:
        await off_loop(_remember, ledger, quote)


def _remember(ledger: Ledger, quote: Quote) -> None:
    remember = partial(ledger.remember_quote, expires=quote.expires, payment_id=quote.payment_id)
    if quote.resource is not None:
        remember(public_url(quote.resource), quote.amount)
    if quote.x402_tool is not None:
        remember(x402_tool_key(quote.x402_tool), quote.amount)
    if quote.payment_id is not None:
        key = payment_key(quote.payment_id)
        earlier = ledger.quote(key)
        remember(key, _higher(earlier.amount, quote.amount) if earlier is not None else quote.amount)


def _higher(earlier: Amount, named: Amount) -> Amount:
    """The higher of two prices named for one invoice (they should agree: if not, the ledger must not say
    less than the wallet may pay); the one named last when they do not compare."""
    try:
        return earlier if earlier.to(named.unit, rounding="up").value > named.value else named
    except UnitMismatch:
        return named


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
