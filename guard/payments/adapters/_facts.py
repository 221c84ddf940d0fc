"""What an adapter reads from a call and its result: plain facts, no MCP objects, no storage.

An adapter is a pure function layer per upstream family (402-mcp, P402, Alby, Token Pilot, x402 over
MCP): `prepare` runs before a call is forwarded (does it pay, what is the most it can spend, which
payment is it, which balances must be fresh); `outcome` runs on the upstream's result (what was
really paid, what balances and prices it revealed). `guard.payments` does the storage and the deciding.

Observation keys (one convention, shared by adapters, the gate and reports):
- `credits:<origin>`: a 402-mcp origin's credits (unit `credits:<origin>`; origin = scheme://host[:port]);
- `p402:<session id>`: a P402 session's remaining budget (usd_micro) and status (money);
- `wallet:<family>`: a wallet's balance (`wallet:alby`, sat) (money);
- `tokens:<session id>`: a Token Pilot token budget (unit `tokens`).

An adapter marks observations of money `money=True`: a drop there that the guard's payments do not explain
is spend seen only in the balance (credits and tokens are the server's own units, never external spend).

Quotes (see `Quote`) are not observations: the ledger keeps them apart, keyed by `public_url` and by payment
hash (`guard.payments.learning.payment_key`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

from guard.core import JSON
from guard.redact import redact_path
from ledgers import Amount, Authorization, BalanceObservation


@dataclass(frozen=True)
class Quote:
    """A price the upstream named for a resource or a payment before anything was paid (a 402 answer, a
    preview, a discover), remembered so a later paying call for that resource, or of that payment (402-mcp's
    `l402-pay {paymentHash}`), has a price bound. At least one of `resource` and `payment_id` is set."""

    resource: str | None  # the URL, as the call names it (None: a price for the payment only)
    amount: Amount
    payment_id: str | None = None  # the invoice's payment hash, when there is one: the price is remembered by it too
    expires: datetime | None = None  # when the upstream says the price stops holding (an invoice's expiry)
    # x402: the tool whose call was answered by this PaymentRequired: remembered by the tool too, so a later
    # call to it without a payment is known to move nothing (neither held nor denied).
    x402_tool: str | None = None


@dataclass(frozen=True)
class Prepared:
    """What a call is, before it is forwarded."""

    pays: bool  # the call can move money
    price: Amount | None = None  # the most it can spend, when the call itself says (invoice, amountSats, x402)
    upto: bool = False  # `price` is a maximum; the settled amount may be lower (x402 `upto`)
    payment_id: str | None = None  # idempotency key: a payment hash, an x402 nonce / payment identifier
    quote_for: str | None = None  # no price in the call: a remembered quote for this resource bounds it
    quote_with: Refresh | None = None  # no live quote: the upstream call that names the price without paying
    depends_on: tuple[str, ...] = ()  # observation keys that must be fresh and sufficient before paying
    refuse: str | None = None  # the adapter cannot let this call pay (unknown asset, unreadable invoice)
    # What is paid for, a URL: descriptive only (reports show it without its query, `paid_for`).
    resource: str | None = field(default=None, compare=False)
    # An x402 payment's signed transfer authorization (EIP-3009): kept so the chain can settle its hold.
    authorization: Authorization | None = field(default=None, compare=False)

    @property
    def paid_for(self) -> str | None:
        """The resource this payment is for, as reports show it: a URL without credentials or query."""
        url = self.resource or self.quote_for
        return public_url(url) if url else None


def public_url(url: str) -> str:
    """`url` as guard stores and shows it: without user info, query or fragment (where API keys and
    tokens travel), host in lower case, secret-looking path segments (`/k/sk_live_…/`, a JWT, 32+ hex,
    a random run) replaced by `[redacted]`."""
    text = url.strip()
    try:
        parts = urlsplit(text)
    except ValueError:  # an unreadable URL (a bad IPv6 host): shown as text
        parts = None
    if parts is None or not parts.scheme or not parts.netloc:
        return redact_path(text.split("?", 1)[0].split("#", 1)[0])[:200]
    host = parts.netloc.rpartition("@")[2].lower()
    return urlunsplit((parts.scheme.lower(), host, redact_path(parts.path), "", ""))[:500]


OutcomeState = Literal["paid", "not_paid", "unknown", "no_payment"]


@dataclass(frozen=True)
class Outcome:
    """What the upstream's answer says happened.

    `state`: `paid` (settle at `spent`), `not_paid` (provably nothing left: void), `unknown` (the money
    may have left: keep the hold in doubt), `no_payment` (a call that does not pay)."""

    state: OutcomeState
    spent: Amount | None = None
    observations: tuple[BalanceObservation, ...] = ()
    quotes: tuple[Quote, ...] = ()
    payment_id: str | None = None  # learned from the answer (a 402's payment hash)
    proven_paid: tuple[str, ...] = ()  # payments this answer proves were made (a stored credential's hash)
    problem: str | None = None  # the answer could not be read as documented: flagged in the audit trail


@dataclass(frozen=True)
class Refresh:
    """An upstream call the guard makes itself: for a fresh observation of a key (`l402-balance {origin}`),
    or for a price before paying (`l402-fetch-preview {url}`)."""

    tool: str
    arguments: JSON


class Adapter(Protocol):
    """One upstream family. Tool names match in kebab and snake case."""

    name: str

    tools: frozenset[str]  # the family's tool names, in one of their spellings

    def knows(self, tool: str) -> bool:
        """Whether `tool` is one of this family's tools."""
        ...

    def prepare(self, tool: str, arguments: JSON, meta: JSON | None) -> Prepared: ...

    def outcome(self, tool: str, arguments: JSON, meta: JSON | None, result: JSON) -> Outcome: ...

    def refresh(self, key: str) -> Refresh | None:
        """How to refresh the observation `key`, or None if this adapter cannot."""
        ...
