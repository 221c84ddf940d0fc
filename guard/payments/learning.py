"""What an answer reveals, stored: the agent's answers and the guard's own calls alike.

- payments it proves were made settle their holds in doubt (`reconcile.settle_proven`);
- balance observations are held against the last one seen (`reconcile.explain`), then stored;
- quotes (a price named before paying) are remembered, keyed by `public_url` (no credentials, query or
  fragment: where API keys and tokens travel), until they expire.

`ask` is the guard's own call upstream (a balance refresh, a price preview), through the session's
`SessionLink`, learnt from like any answer.
"""

from __future__ import annotations

import logging
from functools import partial

from guard.core import SessionLink, off_loop
from guard.errors import UpstreamError
from guard.payments import reconcile
from guard.payments.adapters._facts import Adapter, Outcome, Refresh, public_url
from guard.policy.rules import Policy, Who
from ledgers import Ledger

logger = logging.getLogger("guard.payments")


async def learn(ledger: Ledger, outcome: Outcome, policy: Policy, who: Who) -> None:
    """Store what `outcome` reveals (after reconciling it with what the guard counted)."""
    for payment in outcome.proven_paid:
        await reconcile.settle_proven(ledger, payment)
    for observation in outcome.observations:
        await reconcile.explain(ledger, observation, policy, who)
        await off_loop(ledger.observe, observation)
    for quote in outcome.quotes:
        remember = partial(ledger.remember_quote, expires=quote.expires, payment_id=quote.payment_id)
        await off_loop(remember, public_url(quote.resource), quote.amount)


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
