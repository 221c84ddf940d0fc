"""The Alby adapter (an NWC wallet over MCP): what `pay_invoice` and `fetch_l402` can spend, what
their answers say, and the wallet balance `get_balance` reports, as exact amounts, units and keys.

Answer shapes, as literals: `pay_invoice` → `{preimage, fees_paid_in_sats?}` (older: `fees_paid` in
msat); `get_balance` → `{amount_in_sats}` (older: `{balance}` in msat); `fetch_l402` → the resource's
text, no amount. Answers may be plain text."""

from __future__ import annotations

import json
from typing import Any

import bolt11
import pytest
from bolt11 import Bolt11, MilliSatoshi, TagChar, Tags

from guard.payments.adapters._facts import Outcome, Prepared, Refresh
from guard.payments.adapters.alby import Alby
from ledgers import Amount, BalanceObservation

JSON = dict[str, Any]
ADAPTER = Alby()
WALLET = ("wallet:alby",)

# A throwaway signing key: invoices are made here, deterministically (RFC 6979 signatures).
KEY = "e126f68f7eafcc8b74f54d269fe206be715000f94dac067d1c04a8ca3b2db734"
HASH = "0123456789abcdef" * 4
PREIMAGE = "ab" * 32


def make_invoice(msat: int | None) -> str:
    tags = Tags()
    tags.add(TagChar.payment_hash, HASH)
    tags.add(TagChar.payment_secret, "11" * 32)
    tags.add(TagChar.description, "guard test")
    amount = MilliSatoshi(msat) if msat is not None else None
    return bolt11.encode(Bolt11(currency="bc", date=1_700_000_000, tags=tags, amount_msat=amount), private_key=KEY)


INVOICE_21_SAT = make_invoice(21_000)
AMOUNTLESS = make_invoice(None)
UNREADABLE = INVOICE_21_SAT[:-1] + ("q" if INVOICE_21_SAT[-1] != "q" else "p")


def result(payload: object, *, error: bool = False) -> JSON:
    return {"content": [{"type": "text", "text": json.dumps(payload, indent=2)}], "isError": error}


def raw(text: str, *, error: bool = False) -> JSON:
    return {"content": [{"type": "text", "text": text}], "isError": error}


TOOLS = [
    "pay_invoice",
    "fetch_l402",
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
]


@pytest.mark.parametrize("tool", TOOLS + [tool.replace("_", "-") for tool in TOOLS])
def test_every_alby_tool_is_known_in_snake_and_kebab_case(tool: str) -> None:
    assert ADAPTER.knows(tool)


@pytest.mark.parametrize("tool", ["l402-fetch", "l402_pay", "pay_keysend", "PAY_INVOICE", ""])
def test_other_tools_are_not_known_and_cannot_be_prepared(tool: str) -> None:
    assert not ADAPTER.knows(tool)
    with pytest.raises(ValueError, match="does not know"):
        ADAPTER.prepare(tool, {}, None)


# --- prepare ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "arguments", "prepared"),
    [
        (
            "pay_invoice",
            {"invoice": INVOICE_21_SAT},
            Prepared(pays=True, price=Amount(21_000, "msat"), payment_id=HASH, depends_on=WALLET),
        ),
        (
            "pay-invoice",
            {"invoice": INVOICE_21_SAT, "amount_in_sats": None},
            Prepared(pays=True, price=Amount(21_000, "msat"), payment_id=HASH, depends_on=WALLET),
        ),
        (
            "pay_invoice",
            {"invoice": AMOUNTLESS, "amount_in_sats": 50},
            Prepared(pays=True, price=Amount(50, "sat"), payment_id=HASH, depends_on=WALLET),
        ),
        (
            "pay_invoice",
            {"invoice": AMOUNTLESS, "amount": 50_500},
            Prepared(pays=True, price=Amount(50_500, "msat"), payment_id=HASH, depends_on=WALLET),
        ),
        ("pay_invoice", {"invoice": AMOUNTLESS}, Prepared(pays=True, price=None, payment_id=HASH, depends_on=WALLET)),
        (
            "pay_invoice",
            {"invoice": INVOICE_21_SAT, "amount_in_sats": 30},
            Prepared(pays=True, price=Amount(30_000, "msat"), payment_id=HASH, depends_on=WALLET),
        ),
        (
            "pay_invoice",
            {"invoice": INVOICE_21_SAT, "amount_in_sats": 5},
            Prepared(pays=True, price=Amount(21_000, "msat"), payment_id=HASH, depends_on=WALLET),
        ),
        ("fetch_l402", {"url": "https://api.example.com/x"}, Prepared(pays=True, depends_on=WALLET)),
        ("fetch-l402", {"url": "https://api.example.com/x", "method": "POST"}, Prepared(pays=True, depends_on=WALLET)),
        ("get_balance", {}, Prepared(pays=False)),
        ("make_invoice", {"amount_in_sats": 100}, Prepared(pays=False)),
        ("lookup_invoice", {"payment_hash": HASH}, Prepared(pays=False)),
        ("get_info", {}, Prepared(pays=False)),
        ("get_wallet_service_info", {}, Prepared(pays=False)),
        ("parse_invoice", {"invoice": INVOICE_21_SAT}, Prepared(pays=False)),
        ("fiat_to_sats", {"currency": "usd", "amount": 1}, Prepared(pays=False)),
        ("request_invoice", {"lightning_address": "a@b.c", "amount_in_sats": 10}, Prepared(pays=False)),
        ("search_l402_services", {"query": "jokes"}, Prepared(pays=False)),
    ],
    ids=[
        "an invoice's amount",
        "kebab case, null amount",
        "an amountless invoice with amount_in_sats",
        "an amountless invoice with the older amount in msat",
        "an amountless invoice without an amount: no price",
        "a larger amount than the invoice's bounds it",
        "a smaller amount than the invoice's does not",
        "fetch_l402 pays an unknown price",
        "kebab-case fetch_l402",
        "get_balance",
        "make_invoice",
        "lookup_invoice",
        "get_info",
        "get_wallet_service_info",
        "parse_invoice",
        "fiat_to_sats",
        "request_invoice",
        "search_l402_services",
    ],
)
def test_prepare_says_whether_a_call_pays_and_what_bounds_it(tool: str, arguments: JSON, prepared: Prepared) -> None:
    assert ADAPTER.prepare(tool, arguments, None) == prepared


@pytest.mark.parametrize(
    ("arguments", "reason"),
    [
        ({"invoice": UNREADABLE}, "cannot be decoded"),
        ({"invoice": "lnbc25p1" + INVOICE_21_SAT[10:]}, "not a whole number of millisatoshis"),
        ({}, "missing"),
        ({"invoice": 21}, "missing or not a string"),
        ({"invoice": AMOUNTLESS, "amount_in_sats": -1}, "whole positive number"),
        ({"invoice": AMOUNTLESS, "amount_in_sats": "50"}, "whole positive number"),
        ({"invoice": AMOUNTLESS, "amount_in_sats": 1.5}, "whole positive number"),
        ({"invoice": AMOUNTLESS, "amount_in_sats": True}, "whole positive number"),
        ({"invoice": AMOUNTLESS, "amount_in_sats": 0}, "whole positive number"),
        ({"invoice": AMOUNTLESS, "amount_in_sats": 10**20}, "whole positive number"),
    ],
    ids=[
        "bad checksum",
        "fractional msat",
        "no invoice",
        "a number for an invoice",
        "negative amount",
        "amount as a string",
        "fractional amount",
        "boolean amount",
        "zero amount",
        "absurd amount",
    ],
)
def test_pay_invoice_that_cannot_be_priced_is_refused_without_quoting_the_invoice(arguments: JSON, reason: str) -> None:
    prepared = ADAPTER.prepare("pay_invoice", arguments, None)
    assert prepared.pays and prepared.price is None
    assert prepared.refuse is not None and prepared.refuse.startswith("pay_invoice: ") and reason in prepared.refuse
    invoice = arguments.get("invoice")
    if isinstance(invoice, str):
        assert invoice not in prepared.refuse and invoice[-20:] not in prepared.refuse


# --- outcomes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "answer", "outcome"),
    [
        (
            {"invoice": INVOICE_21_SAT},
            result({"preimage": PREIMAGE}),
            Outcome("paid", spent=Amount(21_000, "msat"), payment_id=HASH),
        ),
        (
            {"invoice": INVOICE_21_SAT},
            result({"preimage": PREIMAGE, "fees_paid_in_sats": 2}),
            Outcome("paid", spent=Amount(23_000, "msat"), payment_id=HASH),
        ),
        (
            {"invoice": INVOICE_21_SAT},
            result({"preimage": PREIMAGE, "fees_paid_in_sats": None}),
            Outcome("paid", spent=Amount(21_000, "msat"), payment_id=HASH),
        ),
        (
            {"invoice": INVOICE_21_SAT},
            result({"preimage": PREIMAGE, "fees_paid": 1_500}),
            Outcome("paid", spent=Amount(22_500, "msat"), payment_id=HASH),
        ),
        (
            {"invoice": AMOUNTLESS, "amount_in_sats": 50},
            result({"preimage": PREIMAGE, "fees_paid_in_sats": 1}),
            Outcome("paid", spent=Amount(51_000, "msat"), payment_id=HASH),
        ),
        (
            {"invoice": AMOUNTLESS},
            result({"preimage": PREIMAGE}),
            Outcome("paid", spent=None, payment_id=HASH, problem="amount unknown"),
        ),
        (
            {"invoice": INVOICE_21_SAT},
            raw("Error: payment timed out", error=True),
            Outcome("unknown", payment_id=HASH, problem="the call failed without saying whether it paid"),
        ),
        (
            {"invoice": INVOICE_21_SAT},
            result({"error": "insufficient balance"}, error=True),
            Outcome("unknown", payment_id=HASH, problem="the call failed without saying whether it paid"),
        ),
    ],
    ids=[
        "paid the invoice's amount",
        "plus fees in sats",
        "null fees",
        "plus the older fees in msat",
        "an amountless invoice at the amount asked",
        "an amountless invoice at no amount asked",
        "plain-text error: in doubt",
        "json error: in doubt",
    ],
)
def test_a_pay_invoice_answer_settles_at_the_invoice_amount_plus_fees(
    arguments: JSON, answer: JSON, outcome: Outcome
) -> None:
    assert ADAPTER.outcome("pay_invoice", arguments, None, answer) == outcome


@pytest.mark.parametrize(
    ("answer", "state", "spent", "problem"),
    [
        (raw("Payment sent!"), "unknown", None, "not JSON"),
        (result({"fees_paid_in_sats": 1}), "unknown", None, "no preimage"),
        (result({"preimage": ""}), "unknown", None, "no preimage"),
        (result(["x"]), "unknown", None, "not a JSON object"),
        ({"content": []}, "unknown", None, "no text content"),
        (
            result({"preimage": PREIMAGE, "fees_paid_in_sats": "2"}),
            "paid",
            Amount(23_000, "msat"),
            "fees_paid_in_sats is a string",
        ),
        (
            result({"preimage": PREIMAGE, "fees_paid_in_sats": -2}),
            "paid",
            Amount(21_000, "msat"),
            "fees_paid_in_sats is negative",
        ),
        (
            result({"preimage": PREIMAGE, "fees_paid_in_sats": 10**30}),
            "paid",
            Amount(21_000, "msat"),
            "fees_paid_in_sats is too large",
        ),
        (
            raw('{"preimage": "' + PREIMAGE + '", "fees_paid": 0.5}'),
            "paid",
            Amount(21_000, "msat"),
            "fees_paid is not a whole number",
        ),
    ],
    ids=[
        "plain-text success",
        "no preimage",
        "empty preimage",
        "a list",
        "no content",
        "fees as a string",
        "negative fees",
        "huge fees",
        "fractional msat fees",
    ],
)
def test_an_odd_pay_invoice_answer_never_raises_and_is_unknown_without_a_preimage(
    answer: JSON, state: str, spent: Amount | None, problem: str
) -> None:
    outcome = ADAPTER.outcome("pay_invoice", {"invoice": INVOICE_21_SAT}, None, answer)
    assert (outcome.state, outcome.spent, outcome.payment_id) == (state, spent, HASH)
    assert outcome.problem is not None and problem in outcome.problem


def test_a_pay_invoice_answer_for_an_unreadable_invoice_is_unknown() -> None:
    outcome = ADAPTER.outcome("pay_invoice", {"invoice": UNREADABLE}, None, raw("Error: bad invoice", error=True))
    assert (outcome.state, outcome.spent, outcome.payment_id) == ("unknown", None, None)
    assert outcome.problem is not None and UNREADABLE not in outcome.problem


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (raw('{"joke": "why did the sat cross the channel"}'), Outcome("paid", problem="amount not reported")),
        (raw("plain text resource"), Outcome("paid", problem="amount not reported")),
        (
            raw("fetch returned non-OK status: 500 oops", error=True),
            Outcome("unknown", problem="the call failed without saying whether it paid"),
        ),
    ],
    ids=["json resource", "text resource", "error after the 402"],
)
def test_fetch_l402_pays_an_unreported_amount_or_is_in_doubt(answer: JSON, outcome: Outcome) -> None:
    assert ADAPTER.outcome("fetch_l402", {"url": "https://api.example.com/x"}, None, answer) == outcome


@pytest.mark.parametrize(
    ("answer", "amount"),
    [
        (result({"amount_in_sats": 1234}), Amount(1234, "sat")),
        (result({"amount_in_sats": 0}), Amount(0, "sat")),
        (result({"balance": 1_234_567}), Amount(1_234_567, "msat")),
        (result({"amount_in_sats": 1234, "balance": 1}), Amount(1234, "sat")),
    ],
    ids=["sats", "empty wallet", "the older msat balance", "sats win over the older field"],
)
def test_get_balance_observes_the_wallet(answer: JSON, amount: Amount) -> None:
    assert ADAPTER.outcome("get_balance", {}, None, answer) == Outcome(
        "no_payment", observations=(BalanceObservation("get_balance", "wallet:alby", amount, money=True),)
    )


@pytest.mark.parametrize(
    ("answer", "amount", "problem"),
    [
        (result({"amount_in_sats": "1234"}), Amount(1234, "sat"), "amount_in_sats is a string"),
        (result({"amount_in_sats": -1}), None, "amount_in_sats is negative"),
        (result({"amount_in_sats": 10**30}), None, "amount_in_sats is too large"),
        (raw('{"balance": 1.5}'), None, "balance is not a whole number"),
        (result({"amount_in_sats": None}), None, "not in a documented shape"),
        (raw("1234 sats"), None, "not JSON"),
        (result({"something": 1}), None, "not in a documented shape"),
    ],
    ids=["string", "negative", "huge", "fractional msat", "null", "plain text", "no balance field"],
)
def test_an_odd_balance_answer_never_raises(answer: JSON, amount: Amount | None, problem: str) -> None:
    outcome = ADAPTER.outcome("get-balance", {}, None, answer)
    assert outcome.state == "no_payment"
    assert tuple(o.amount for o in outcome.observations) == ((amount,) if amount else ())
    assert outcome.problem is not None and problem in outcome.problem


def test_an_error_balance_answer_observes_nothing() -> None:
    assert ADAPTER.outcome("get_balance", {}, None, raw("Error: relay unreachable", error=True)) == Outcome(
        "no_payment", problem="the result text is not JSON"
    )


@pytest.mark.parametrize("tool", ["make_invoice", "lookup_invoice", "get_info", "parse_invoice", "request_invoice"])
def test_answers_of_tools_that_do_not_pay_are_no_payment(tool: str) -> None:
    answer = result({"invoice": INVOICE_21_SAT, "amount_in_sats": 21, "preimage": PREIMAGE})
    assert ADAPTER.outcome(tool, {}, None, answer) == Outcome("no_payment")


@pytest.mark.parametrize(
    ("key", "refresh"),
    [
        ("wallet:alby", Refresh("get_balance", {})),
        ("wallet:other", None),
        ("credits:https://api.example.com", None),
    ],
)
def test_the_wallet_balance_is_refreshed_by_get_balance(key: str, refresh: Refresh | None) -> None:
    assert ADAPTER.refresh(key) == refresh


def test_the_adapter_is_named_alby() -> None:
    assert ADAPTER.name == "alby"
