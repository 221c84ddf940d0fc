"""Alby MCP server (an NWC wallet): what its calls spend and what its answers say.

Facts from the project's UPSTREAMS notes, section 4: `pay_invoice {invoice, amount_in_sats?}` answers
`{preimage, fees_paid_in_sats?}` (the amount is not echoed: it is the invoice's); `fetch_l402 {url}`
pays silently and reports no amount; `get_balance` answers `{amount_in_sats}` (older releases:
`{balance}` in msat). Older releases also took `amount` (msat) for an amountless invoice and answered
`fees_paid` (msat); both are read. Answers may be JSON or plain text; an error answer of a paying call
is `unknown` (the payment may have gone through).
"""

from __future__ import annotations

from guard.core import JSON
from guard.names import known
from guard.payments.adapters._bolt11 import InvoiceError, read_invoice
from guard.payments.adapters._facts import Outcome, Prepared, Refresh
from guard.payments.adapters.l402_mcp import MAX_SATS, Reading, read_count, read_result
from ledgers import MAX_AMOUNT, Amount, BalanceObservation

NAME = "alby"
WALLET_KEY = "wallet:alby"

PAYING_TOOLS = frozenset({"pay_invoice", "fetch_l402"})
READING_TOOLS = frozenset(
    {
        "get_balance",
        "make_invoice",
        "lookup_invoice",
        "list_transactions",
        "get_info",
        "get_wallet_service_info",
        "parse_invoice",
        "fiat_to_sats",
        "request_invoice",
        "search_l402_services",
    }
)
TOOLS = PAYING_TOOLS | READING_TOOLS


class Alby:
    """The adapter for the Alby MCP server."""

    name = NAME

    tools = TOOLS

    def knows(self, tool: str) -> bool:
        return known(tool, TOOLS) is not None

    def prepare(self, tool: str, arguments: JSON, meta: JSON | None) -> Prepared:
        name = self._tool(tool)
        args = arguments if isinstance(arguments, dict) else {}
        if name == "pay_invoice":
            return _prepare_pay_invoice(args)
        if name == "fetch_l402":
            # The price is in the 402 the wallet sees, not in the call: the policy's max_price bounds it.
            return Prepared(pays=True, depends_on=(WALLET_KEY,))
        return Prepared(pays=False)

    def outcome(self, tool: str, arguments: JSON, meta: JSON | None, result: JSON) -> Outcome:
        name = self._tool(tool)
        args = arguments if isinstance(arguments, dict) else {}
        reading = read_result(result)
        if name == "pay_invoice":
            return _pay_invoice_outcome(args, reading)
        if name == "fetch_l402":
            if reading.error:
                reading.problems = ["the call failed without saying whether it paid"]
                return Outcome("unknown", problem=reading.problem())
            return Outcome("paid", spent=None, problem="amount not reported")
        if name == "get_balance":
            return _balance_outcome(reading)
        return Outcome("no_payment")

    def refresh(self, key: str) -> Refresh | None:
        return Refresh("get_balance", {}) if key == WALLET_KEY else None

    def _tool(self, tool: str) -> str:
        name = known(tool, TOOLS)  # Alby's own snake case; kebab case matches too
        if name is None:
            raise ValueError(f"{NAME} does not know the tool {tool!r}")
        return name


def _asked_amount(args: JSON) -> tuple[Amount | None, bool]:
    """The amount the call names for an amountless invoice (`amount_in_sats`, or the older `amount`
    in msat), and whether one was given but cannot be read."""
    for name, unit, limit in (("amount_in_sats", "sat", MAX_SATS), ("amount", "msat", MAX_AMOUNT)):
        value = args.get(name)
        if value is None:
            continue
        number = None if isinstance(value, str) else read_count(value, limit)[0]
        if not number:
            return None, True
        return Amount(number, unit), False
    return None, False


def _invoice(args: JSON) -> tuple[Amount | None, str]:
    invoice = args.get("invoice")
    if not isinstance(invoice, str):
        raise InvoiceError("the invoice is missing or not a string")
    read = read_invoice(invoice)
    return read.amount, read.payment_hash


def _prepare_pay_invoice(args: JSON) -> Prepared:
    try:
        amount, payment_hash = _invoice(args)
    except InvoiceError as error:
        return Prepared(pays=True, refuse=f"pay_invoice: {error}")
    asked, bad = _asked_amount(args)
    if bad:
        return Prepared(pays=True, refuse="pay_invoice: the amount must be a whole positive number")
    price = amount if amount is not None else asked
    if amount is not None and asked is not None and asked.to("msat").value > amount.value:
        price = asked.to("msat")  # the most the wallet can be made to pay
    return Prepared(pays=True, price=price, payment_id=payment_hash, depends_on=(WALLET_KEY,))


def _pay_invoice_outcome(args: JSON, reading: Reading) -> Outcome:
    amount: Amount | None
    payment_hash: str | None
    try:
        amount, payment_hash = _invoice(args)
    except InvoiceError:
        amount, payment_hash = None, None
    if amount is None:
        amount, _ = _asked_amount(args)
    data = reading.data
    if reading.error:
        reading.problems = ["the call failed without saying whether it paid"]
        return Outcome("unknown", payment_id=payment_hash, problem=reading.problem())
    if not isinstance(data, dict):
        if data is not None:
            reading.problems.append("the result is not a JSON object")
        return Outcome("unknown", payment_id=payment_hash, problem=reading.problem())
    if not isinstance(data.get("preimage"), str) or not data["preimage"]:
        reading.problems.append("no preimage in the result")
        return Outcome("unknown", payment_id=payment_hash, problem=reading.problem())
    fees = _fees(data, reading)
    if amount is None:
        reading.problems.append("amount unknown")
        return Outcome("paid", spent=None, payment_id=payment_hash, problem=reading.problem())
    spent = amount.to("msat")
    if fees is not None:
        total = spent.value + fees.to("msat").value
        if total <= MAX_AMOUNT:
            spent = Amount(total, "msat")
        else:
            reading.problems.append("fees are too large to count")
    return Outcome("paid", spent=spent, payment_id=payment_hash, problem=reading.problem())


def _fees(data: JSON, reading: Reading) -> Amount | None:
    """Routing fees: `fees_paid_in_sats` (sat), or the older `fees_paid` (msat)."""
    if data.get("fees_paid_in_sats") is not None:
        sats = reading.count(data, "fees_paid_in_sats", MAX_SATS)
        if sats is None:
            reading.problems.append("fees_paid_in_sats cannot be read")
        return Amount(sats, "sat") if sats is not None else None
    if data.get("fees_paid") is not None:
        msat = reading.count(data, "fees_paid")
        if msat is None:
            reading.problems.append("fees_paid cannot be read")
        return Amount(msat, "msat") if msat is not None else None
    return None


def _balance_outcome(reading: Reading) -> Outcome:
    data = reading.data
    amount = None
    if isinstance(data, dict) and data.get("amount_in_sats") is not None:
        sats = reading.count(data, "amount_in_sats", MAX_SATS)
        amount = Amount(sats, "sat") if sats is not None else None
    elif isinstance(data, dict) and data.get("balance") is not None:
        msat = reading.count(data, "balance")
        amount = Amount(msat, "msat") if msat is not None else None
    else:
        if not reading.error and not reading.problems:
            reading.problems.append("the result is not in a documented shape")
        return Outcome("no_payment", problem=reading.problem())
    if amount is None:
        return Outcome("no_payment", problem=reading.problem())
    observation = BalanceObservation("get_balance", WALLET_KEY, amount, money=True)
    return Outcome("no_payment", observations=(observation,), problem=reading.problem())
