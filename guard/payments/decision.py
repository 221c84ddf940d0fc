"""How a call is priced and budgeted before it is forwarded: the money decision, in one place.

`bound` turns a call into a `Bound` (what the ledger's reserve needs) or a denial, in this order:

1. the adapter's reading: which adapter reads the call (`reading`); its refusal (an unreadable invoice,
   an unknown x402 asset, a variant of a paying tool's name) denies it;
2. whether it pays: the adapter's word, else the policy's `pays`; a call that does not pay stops here, and
   so does a call without an x402 payment to a tool x402 pays (`pays: x402`, or one that answered with an
   x402 PaymentRequired: remembered by the tool like a quote);
3. the price bound, the first of: the call's own (an invoice, `amountSats`, an x402 payment) → the
   policy's `price` / `price_from` → a live quote: for the payment the call names (402-mcp's `l402-pay
   {paymentHash}`), else for the resource (with none, the guard asks the upstream itself when the adapter
   names a call that quotes without paying: `l402-fetch-preview`) → the policy's `max_price` → none:
   refused (no price, no pay). The hold records which (`priced_by`);
4. the `max_price` cap: a price above it, or in a unit it does not compare with, is refused;
5. the budgets that count it: those covering the tool in a unit the price converts to, by itself (sat,
   msat) or through the policy's `rates:`; none is a refusal naming the rate that is missing;
6. the balances it draws on can pay it (`balances.check`: dead, below the price, stale; refreshed first
   under `on_stale: refresh`).

The rate limits, approvals and the reserve itself are the gate's steps around this one. A denial after
step 3 carries the price asked (`Denial.price`): the call event keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from guard.core import SessionLink, ToolCall, off_loop
from guard.errors import PriceUnknown
from guard.payments import balances
from guard.payments.adapters._facts import public_url
from guard.payments.learning import ask, payment_key, x402_tool_key
from guard.payments.reading import Readers, Reading
from guard.policy.rules import Denial, Policy, Who, counting, missing_rate
from ledgers import Amount, AmountError, Authorization, Budget, Ledger, Rates, UnitMismatch

PricedBy = Literal["call", "policy", "quote", "max_price"]
"""What set a paying call's price bound: the call itself, the policy's `price` / `price_from`, a price the
upstream named (a quote), or the policy's cap when nothing named a price."""


@dataclass(frozen=True)
class Bound:
    """A call the money rules let through: the adapter's reading (the answer is read with it) and, for a
    paying call, its price bound, what set it and the budgets that count it. `price` None: the call does
    not pay, and nothing is reserved."""

    reading: Reading
    price: Amount | None = None
    priced_by: PricedBy | None = None
    budgets: tuple[Budget, ...] = ()
    would_deny: Denial | None = None  # a shadowed max_price it is over (shadow mode: forwarded all the same)

    @property
    def payment_id(self) -> str | None:
        """The payment's idempotency key (a payment hash, an x402 nonce): one open or settled hold per key."""
        return self.reading.prepared.payment_id if self.reading.prepared is not None else None

    @property
    def balance_key(self) -> str | None:
        """The balance this payment draws on (the first it depends on): reconciliation reads it."""
        depends_on = self.reading.prepared.depends_on if self.reading.prepared is not None else ()
        return depends_on[0] if depends_on else None

    @property
    def authorization(self) -> Authorization | None:
        """An x402 payment's signed transfer authorization (payer, nonce, validBefore), if it carries one."""
        return self.reading.prepared.authorization if self.reading.prepared is not None else None

    @property
    def resource(self) -> str | None:
        """What is paid for, as reports show it (a URL without credentials or query)."""
        return self.reading.prepared.paid_for if self.reading.prepared is not None else None


async def bound(
    ledger: Ledger, readers: Readers, policy: Policy, call: ToolCall, who: Who, link: SessionLink | None
) -> Bound | Denial:
    """The money decision for `call` (see the module's docstring); `link` reaches the session's upstream
    for a price preview or a balance refresh."""
    reading = readers.read(call)
    if reading.refusal is not None and reading.adapter is not None:
        return Denial(f"adapters.{reading.adapter.name}", reading.refusal, kind="adapter")
    if not (reading.pays if reading.pays is not None else policy.pays(call.name)):
        return Bound(reading)
    if reading.pays is None and await _x402_without_payment(ledger, readers, policy, call, reading):
        return Bound(reading)  # x402 pays this tool, and this call carries no payment: it moves nothing
    try:
        price, priced_by = await _price(ledger, policy, call, reading, who, link)
    except PriceUnknown as exc:
        hint = " (if x402 pays it, say `pays: x402`)" if readers.unsigned_x402(reading) else ""
        return Denial(f"tools.{call.name}", f"no price, no pay: {exc}{hint}", kind="price")
    return await priced(ledger, policy, call, reading, price, priced_by, who, link)


async def priced(
    ledger: Ledger,
    policy: Policy,
    call: ToolCall,
    reading: Reading,
    price: Amount,
    priced_by: PricedBy,
    who: Who,
    link: SessionLink | None,
) -> Bound | Denial:
    """Steps 4 to 6 for a call priced at `price`: the cap, the budgets that count it, the balances. (`guard
    policy simulate` enters here with a recorded price.)"""
    would = _over_cap(policy, call, price)
    if would is not None and not policy.shadowed(would):
        return replace(would, price=price)  # the call event keeps the price asked
    budgets = await _budgets(ledger, policy, call, reading, price, who, link)
    if isinstance(budgets, Denial):
        return replace(budgets, price=price)
    return Bound(reading, price, priced_by, budgets, would)


async def _x402_without_payment(
    ledger: Ledger, readers: Readers, policy: Policy, call: ToolCall, reading: Reading
) -> bool:
    """A policy-paying tool's call without an x402 payment, where x402 is what pays the tool: the policy says
    so (`pays: x402`), or the tool answered with an x402 PaymentRequired (a quote by the tool, while it lasts:
    shared on one ledger). Only a signed payment in `_meta` can move its money."""
    if not readers.unsigned_x402(reading):
        return False
    return policy.paid_by_x402(call.name) or await off_loop(ledger.quote, x402_tool_key(call.name)) is not None


def _over_cap(policy: Policy, call: ToolCall, price: Amount) -> Denial | None:
    """Step 4 for a priced call: the `max_price` cap (a shadowed cap's denial is the caller's to note)."""
    try:
        cap = policy.max_price(call.name)
    except PriceUnknown as exc:
        return Denial(f"tools.{call.name}", f"no price, no pay: {exc}", kind="price")
    if cap is not None and (over := _over(price, cap, policy.rates)) is not None:
        return Denial(f"tools.{call.name}.max_price", over, kind="price")
    return None


async def _budgets(
    ledger: Ledger, policy: Policy, call: ToolCall, reading: Reading, price: Amount, who: Who, link: SessionLink | None
) -> tuple[Budget, ...] | Denial:
    """Steps 5 and 6 for a priced call: the budgets that count it (returned), converting through the
    policy's rates; the balances it draws on."""
    covering = policy.budgets(call.name, who)
    try:
        budgets = counting(covering, price, policy.rates)
    except AmountError as exc:  # a rate that makes it larger than a ledger holds
        return Denial("rates", f"the price {price} cannot be counted: {exc}", kind="budget")
    if not budgets:
        return Denial("budgets", missing_rate(covering, price), kind="budget")
    if (denial := await balances.check(ledger, policy, reading, price, who, link)) is not None:
        return denial
    return tuple(budgets)


async def _price(
    ledger: Ledger,
    policy: Policy,
    call: ToolCall,
    reading: Reading,
    who: Who,
    link: SessionLink | None,
) -> tuple[Amount, PricedBy]:
    """The most this paying call can spend, and what said so (the order of the module's docstring).

    Raises:
        PriceUnknown: nothing bounds it (no price, no pay), the policy's price argument is unreadable, or
            its caps do not compare."""
    prepared = reading.prepared
    if prepared is not None and prepared.price is not None:
        return prepared.price, "call"
    if (fixed := policy.fixed_price(call.name, call.arguments)) is not None:
        return fixed, "policy"
    if (quoted := await _quote(ledger, policy, reading, who, link)) is not None:
        return quoted, "quote"
    if (cap := policy.max_price(call.name)) is not None:
        return cap, "max_price"
    raise PriceUnknown(f"the price of {call.name} is unknown and the policy sets no max_price for it")


async def _quote(ledger: Ledger, policy: Policy, reading: Reading, who: Who, link: SessionLink | None) -> Amount | None:
    """A live quote for the payment the call names; else for the resource the call pays for, and with none,
    the one a preview names, when the adapter says how to ask for it.

    The payment's quote wins over the resource's: it is the price of the very invoice the upstream will pay
    (402-mcp pays the challenge it cached for that hash), where a resource's quote is the price of its next
    invoice, which may differ."""
    prepared = reading.prepared
    if prepared is not None and prepared.payment_id is not None:
        if (by_payment := await off_loop(ledger.quote, payment_key(prepared.payment_id))) is not None:
            return by_payment.amount
    if prepared is None or prepared.quote_for is None:
        return None
    key = public_url(prepared.quote_for)
    quote = await off_loop(ledger.quote, key)
    how = prepared.quote_with
    if quote is None and how is not None and link is not None and reading.adapter is not None:
        if await ask(ledger, reading.adapter, how, link, policy, who, f"the price of {key}"):
            quote = await off_loop(ledger.quote, key)
    return quote.amount if quote is not None else None


def _over(price: Amount, cap: Amount, rates: Rates) -> str | None:
    """Why `price` breaks the per-call cap, if it does (compared through `rates` across currencies)."""
    try:
        above = price.to(cap.unit, rates=rates, rounding="up").value > cap.value
    except UnitMismatch:
        return f"the price is in {price.unit}, max_price in {cap.unit}, and no rate converts one to the other"
    except AmountError:
        return f"the price {price} is too large to compare with max_price {cap}"
    return f"the price {price} is over the per-call cap of {cap}" if above else None
