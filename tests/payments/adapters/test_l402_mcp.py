"""The 402-mcp adapter and the BOLT11 reader: what each call spends before it is forwarded, and what
each documented answer (and each malformed one) says afterwards, as exact amounts, units and keys.

The answer shapes are 402-mcp v4.2.1's, written here as literals: every result is one text content
item holding pretty-printed JSON, errors are JSON text with `isError: true`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import bolt11
import pytest
from bolt11 import Bolt11, MilliSatoshi, TagChar, Tags

from guard.payments.adapters._bolt11 import InvoiceError, read_invoice
from guard.payments.adapters._facts import Outcome, Prepared, Quote, Refresh
from guard.payments.adapters.l402_mcp import L402Mcp, origin_of
from ledgers import Amount, BalanceObservation

JSON = dict[str, Any]
ADAPTER = L402Mcp()

# A throwaway signing key: invoices are made here, deterministically (RFC 6979 signatures).
KEY = "e126f68f7eafcc8b74f54d269fe206be715000f94dac067d1c04a8ca3b2db734"
HASH = "0123456789abcdef" * 4
OTHER_HASH = "fedcba9876543210" * 4


def make_invoice(msat: int | None, payment_hash: str = HASH, *, with_hash: bool = True) -> str:
    tags = Tags()
    if with_hash:
        tags.add(TagChar.payment_hash, payment_hash)
    tags.add(TagChar.payment_secret, "11" * 32)
    tags.add(TagChar.description, "guard test")
    amount = MilliSatoshi(msat) if msat is not None else None
    invoice = Bolt11(currency="bc", date=1_700_000_000, tags=tags, amount_msat=amount)
    return bolt11.encode(invoice, private_key=KEY, ignore_exceptions=not with_hash)


INVOICE_21_SAT = make_invoice(21_000)
# make_invoice's invoices are dated 1 700 000 000 and name no expiry: BOLT11's default, an hour.
INVOICE_EXPIRES = datetime.fromtimestamp(1_700_000_000 + 3600, UTC)
AMOUNTLESS = make_invoice(None)
# The BOLT 11 specification's "2500u for a cup of coffee" vector (no payment secret: an older invoice).
SPEC_VECTOR = (
    "lnbc2500u1pvjluezpp5qqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqqqsyqcyq5rqwzqfqypqdq5xysxxatsyp3k7enxv4jsxqzpu"
    "aztrnwngzn3kdzw5hydlzf03qdgm2hdq27cqv3agm2awhz5se903vruatfhq77w3ls4evs3ch9zw97j25emudupq63nyw24cg27h2rsp"
    "fj9srp"
)
SPEC_HASH = "0001020304050607080900010203040506070809000102030405060708090102"

URL = "https://api.example.com/v1/joke"
ORIGIN = "https://api.example.com"
CREDITS = f"credits:{ORIGIN}"


def preview(url: str, **arguments: str) -> Refresh:
    """The preview guard makes itself before an auto-paid fetch of `url` with no live quote."""
    return Refresh("l402-fetch-preview", {"url": url, **arguments})


def result(payload: object, *, error: bool = False) -> JSON:
    """A 402-mcp answer: one text item of pretty-printed JSON."""
    return {"content": [{"type": "text", "text": json.dumps(payload, indent=2)}], "isError": error}


def raw(text: str, *, error: bool = False) -> JSON:
    return {"content": [{"type": "text", "text": text}], "isError": error}


def credits(value: int) -> Amount:
    return Amount(value, CREDITS)


# --- BOLT11 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("invoice", "amount", "payment_hash"),
    [
        (INVOICE_21_SAT, Amount(21_000, "msat"), HASH),
        (INVOICE_21_SAT.upper(), Amount(21_000, "msat"), HASH),
        (f"  {INVOICE_21_SAT}\n", Amount(21_000, "msat"), HASH),
        (make_invoice(1), Amount(1, "msat"), HASH),  # lnbc10p: a pico amount of exactly 1 msat
        (make_invoice(2_500_000_000, OTHER_HASH), Amount(2_500_000_000, "msat"), OTHER_HASH),
        (SPEC_VECTOR, Amount(250_000_000, "msat"), SPEC_HASH),
        (AMOUNTLESS, None, HASH),
    ],
    ids=["21 sat", "upper case", "surrounding space", "1 msat", "0.025 btc", "spec vector", "amountless"],
)
def test_an_invoice_reads_as_its_exact_msat_amount_and_its_payment_hash(
    invoice: str, amount: Amount | None, payment_hash: str
) -> None:
    read = read_invoice(invoice)
    assert (read.amount, read.payment_hash) == (amount, payment_hash)


def _flip_last(invoice: str) -> str:
    return invoice[:-1] + ("q" if invoice[-1] != "q" else "p")


@pytest.mark.parametrize(
    ("invoice", "reason"),
    [
        (_flip_last(INVOICE_21_SAT), "cannot be decoded"),
        (INVOICE_21_SAT[:60], "cannot be decoded"),
        ("lnbc25p1" + INVOICE_21_SAT[10:], "not a whole number of millisatoshis"),
        ("lnbc99999999999999m1" + INVOICE_21_SAT[10:], "too large"),
        ("lnbc" + "9" * 40 + "1" + INVOICE_21_SAT[10:], "too large"),
        ("cashuAeyJ0b2tlbiI6W3sicHJvb2ZzIjpbeyJhbW91bnQiOjJ9XX1dfQ", "not a BOLT11 invoice"),
        ("lnxy1" + INVOICE_21_SAT[10:], "not a BOLT11 invoice"),
        ("lnbc21u", "cannot be decoded"),
        (make_invoice(21_000, with_hash=False), "no payment hash"),
        ("   ", "empty"),
        ("lnbc1" + "q" * 20_001, "longer than"),
    ],
    ids=[
        "bad checksum",
        "truncated",
        "fractional msat",
        "too large",
        "absurdly long amount",
        "a cashu token",
        "unknown currency",
        "no data part",
        "no payment hash",
        "blank",
        "too long",
    ],
)
def test_an_unreadable_invoice_is_refused_with_a_reason_that_never_quotes_it(invoice: str, reason: str) -> None:
    with pytest.raises(InvoiceError) as raised:
        read_invoice(invoice)
    message = str(raised.value)
    assert reason in message
    if invoice.strip():
        assert invoice.strip() not in message and invoice.strip()[-20:] not in message
    # The decoder's own exception (which could say more) is neither the cause nor shown as context.
    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None or raised.value.__suppress_context__


def expiring_invoice(date: int, expiry_s: int | None) -> str:
    tags = Tags()
    tags.add(TagChar.payment_hash, HASH)
    tags.add(TagChar.payment_secret, "11" * 32)
    tags.add(TagChar.description, "guard test")
    if expiry_s is not None:
        tags.add(TagChar.expire_time, expiry_s)
    return bolt11.encode(Bolt11(currency="bc", date=date, tags=tags, amount_msat=MilliSatoshi(1000)), private_key=KEY)


@pytest.mark.parametrize(
    ("date", "expiry_s", "expires"),
    [
        (1_700_000_000, None, datetime(2023, 11, 14, 23, 13, 20, tzinfo=UTC)),  # no `x` tag: an hour
        (1_700_000_000, 60, datetime(2023, 11, 14, 22, 14, 20, tzinfo=UTC)),
        (1_700_000_000, 86_400 * 7, datetime(2023, 11, 21, 22, 13, 20, tzinfo=UTC)),
    ],
    ids=["default hour", "a minute", "a week"],
)
def test_an_invoice_expires_at_its_timestamp_plus_its_expiry(
    date: int, expiry_s: int | None, expires: datetime
) -> None:
    assert read_invoice(expiring_invoice(date, expiry_s)).expires == expires


def test_an_invoice_whose_expiry_is_past_any_calendar_has_none_and_is_still_read() -> None:
    read = read_invoice(expiring_invoice(1_700_000_000, 2**40))
    assert (read.amount, read.payment_hash, read.expires) == (Amount(1000, "msat"), HASH, None)


def test_an_invoice_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(InvoiceError, match="not a string"):
        read_invoice(21)  # type: ignore[arg-type]


# --- which tools, which origins --------------------------------------------------------------------

TOOLS = [
    "l402-config",
    "l402-discover",
    "l402-fetch-preview",
    "l402-fetch",
    "l402-pay",
    "l402-buy-credits",
    "l402-redeem-cashu",
    "l402-credentials",
    "l402-balance",
    "l402-search",
    "l402-store-token",
]


@pytest.mark.parametrize("tool", TOOLS + [tool.replace("-", "_") for tool in TOOLS])
def test_every_402_mcp_tool_is_known_in_kebab_and_snake_case(tool: str) -> None:
    assert ADAPTER.knows(tool)


@pytest.mark.parametrize("tool", ["pay_invoice", "fetch_l402", "l402-fetchx", "L402-FETCH", "l402", ""])
def test_other_tools_are_not_known_and_cannot_be_prepared(tool: str) -> None:
    assert not ADAPTER.knows(tool)
    with pytest.raises(ValueError, match="does not know"):
        ADAPTER.prepare(tool, {}, None)


@pytest.mark.parametrize(
    ("url", "origin"),
    [
        ("https://api.example.com/v1/joke?x=1#f", "https://api.example.com"),
        ("HTTPS://API.Example.COM:443/", "https://api.example.com"),
        ("http://api.example.com:80/x", "http://api.example.com"),
        ("http://localhost:8080/x", "http://localhost:8080"),
        ("https://user:pw@api.example.com:8443/", "https://api.example.com:8443"),
        ("http://[::1]:3000/x", "http://[::1]:3000"),
        ("ftp://api.example.com/", None),
        ("api.example.com/v1", None),
        ("https://api.example.com:99999/", None),
        ("https:///path", None),
        (None, None),
        (42, None),
    ],
)
def test_an_origin_is_scheme_host_and_port_with_default_ports_dropped(url: object, origin: str | None) -> None:
    assert origin_of(url) == origin


# --- prepare ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "arguments", "prepared"),
    [
        ("l402-fetch", {"url": URL}, Prepared(pays=False)),
        ("l402-fetch", {"url": URL, "autoPay": False}, Prepared(pays=False)),
        ("l402-fetch", {"url": URL, "autoPay": None}, Prepared(pays=False)),
        ("l402-fetch", {"url": URL, "autoPay": True}, Prepared(pays=True, quote_for=URL, quote_with=preview(URL))),
        (
            "l402_fetch",
            {"url": "HTTPS://API.example.com:443/v1/joke", "autoPay": True},
            Prepared(
                pays=True,
                quote_for="HTTPS://API.example.com:443/v1/joke",
                quote_with=Refresh("l402_fetch_preview", {"url": "HTTPS://API.example.com:443/v1/joke"}),
            ),
        ),
        (
            "l402-fetch",
            {"url": "http://localhost:8080/x", "autoPay": True},
            Prepared(pays=True, quote_for="http://localhost:8080/x", quote_with=preview("http://localhost:8080/x")),
        ),
        (
            "l402-fetch",
            {"url": URL, "urls": [URL, "http://joke.onion/v1/joke"], "autoPay": True},
            Prepared(pays=True, quote_for=URL, quote_with=preview(URL)),
        ),
        ("l402-fetch", {"url": URL, "autoPay": "true"}, Prepared(pays=True, quote_for=URL, quote_with=preview(URL))),
        (
            "l402-fetch",
            {"url": URL, "method": "POST", "headers": {"Authorization": "Bearer t"}, "autoPay": True},
            Prepared(pays=True, quote_for=URL, quote_with=preview(URL, method="POST")),
        ),
        (
            "l402-fetch",
            {"url": "not a url", "autoPay": True},
            Prepared(pays=True, quote_for="not a url", quote_with=preview("not a url")),
        ),
        ("l402-fetch", {"autoPay": True}, Prepared(pays=True)),
        (
            "l402-pay",
            {"invoice": INVOICE_21_SAT, "macaroon": "AgEL"},
            Prepared(pays=True, price=Amount(21_000, "msat"), payment_id=HASH),
        ),
        (
            "l402_pay",
            {"invoice": INVOICE_21_SAT, "paymentHash": OTHER_HASH},
            Prepared(pays=True, price=Amount(21_000, "msat"), payment_id=HASH),
        ),
        ("l402-pay", {"invoice": AMOUNTLESS}, Prepared(pays=True, price=None, payment_id=HASH)),
        ("l402-pay", {"paymentHash": OTHER_HASH.upper()}, Prepared(pays=True, payment_id=OTHER_HASH)),
        ("l402-pay", {"invoice": "", "paymentHash": OTHER_HASH}, Prepared(pays=True, payment_id=OTHER_HASH)),
        ("l402-pay", {"paymentHash": "not-a-hash"}, Prepared(pays=True)),
        ("l402-pay", {}, Prepared(pays=True)),
        ("l402-buy-credits", {"url": URL}, Prepared(pays=False)),
        ("l402-buy-credits", {"url": URL, "amountSats": None}, Prepared(pays=False)),
        ("l402-buy-credits", {"url": URL, "amountSats": 500}, Prepared(pays=True, price=Amount(500, "sat"))),
        ("l402_buy_credits", {"url": URL, "amountSats": 500.0}, Prepared(pays=True, price=Amount(500, "sat"))),
        ("l402-redeem-cashu", {"url": URL, "token": "cashuAeyJ0b2tlbiI6W119"}, Prepared(pays=True)),
        ("l402-balance", {"origin": ORIGIN}, Prepared(pays=False)),
        ("l402-credentials", {}, Prepared(pays=False)),
        ("l402-config", {}, Prepared(pays=False)),
        ("l402-fetch-preview", {"url": URL}, Prepared(pays=False)),
        ("l402-discover", {"url": URL}, Prepared(pays=False)),
        ("l402-search", {"query": "jokes"}, Prepared(pays=False)),
        ("l402-store-token", {"url": URL, "token": "AgEL:00ff"}, Prepared(pays=False)),
    ],
    ids=[
        "fetch without autoPay does not pay",
        "fetch with autoPay false does not pay",
        "fetch with autoPay null does not pay",
        "fetch with autoPay pays, bound by a quote (a preview when none is live)",
        "snake-case fetch, origin normalised, quote for the url as written",
        "fetch to a non-default port",
        "fetch with transport urls uses the first",
        "fetch with autoPay as a string counts as paying",
        "fetch with a method previews with that method (and never its headers)",
        "fetch to an unreadable url pays with no credits to check",
        "fetch without a url",
        "pay is priced by its invoice",
        "snake-case pay takes the invoice's hash over the argument",
        "pay of an amountless invoice has no price",
        "pay by a cached paymentHash has no price",
        "pay with an empty invoice is pay by paymentHash",
        "pay with a malformed paymentHash has no payment id",
        "pay with nothing",
        "buy-credits without an amount lists tiers",
        "buy-credits with a null amount lists tiers",
        "buy-credits is priced by amountSats",
        "snake-case buy-credits with a whole decimal amount",
        "redeem-cashu pays an unknown value",
        "balance",
        "credentials",
        "config",
        "fetch-preview",
        "discover",
        "search",
        "store-token",
    ],
)
def test_prepare_says_whether_a_call_pays_and_what_bounds_it(tool: str, arguments: JSON, prepared: Prepared) -> None:
    assert ADAPTER.prepare(tool, arguments, None) == prepared


@pytest.mark.parametrize(
    "invoice",
    [_flip_last(INVOICE_21_SAT), "lnbc25p1" + INVOICE_21_SAT[10:], "cashuAeyJ0b2tlbiI6W119", 21, ["x"]],
    ids=["bad checksum", "fractional msat", "not an invoice", "a number", "a list"],
)
def test_pay_with_an_unreadable_invoice_is_refused_without_quoting_it(invoice: object) -> None:
    prepared = ADAPTER.prepare("l402-pay", {"invoice": invoice}, None)
    assert prepared.pays and prepared.price is None and prepared.refuse is not None
    assert prepared.refuse.startswith("l402-pay: ")
    assert str(invoice) not in prepared.refuse


@pytest.mark.parametrize(
    "amount", ["500", -1, 0, True, False, 1.5, float("nan"), 21_000_000 * 100_000_000 + 1, 2**70, [500]]
)
def test_buy_credits_with_an_amount_that_is_not_a_whole_positive_sat_count_is_refused(amount: object) -> None:
    prepared = ADAPTER.prepare("l402-buy-credits", {"url": URL, "amountSats": amount}, None)
    assert prepared.pays and prepared.price is None
    assert prepared.refuse is not None and "amountSats must be a whole number of sats" in prepared.refuse


# --- l402-fetch outcomes ---------------------------------------------------------------------------

PAYING_FETCH = {"url": URL, "autoPay": True}
FREE_FETCH = {"url": URL}
ANSWERED = {"status": 200, "headers": {"content-type": "text/plain"}, "body": "a joke"}


@pytest.mark.parametrize(
    ("arguments", "answer", "outcome"),
    [
        (
            PAYING_FETCH,
            result({**ANSWERED, "creditsRemaining": 99, "satsPaid": 21}),
            Outcome(
                "paid",
                spent=Amount(21, "sat"),
                observations=(BalanceObservation("l402-fetch", CREDITS, credits(99), upstream_stale=False),),
            ),
        ),
        (
            PAYING_FETCH,
            result({**ANSWERED, "creditsRemaining": None, "satsPaid": 0}),
            Outcome("paid", spent=Amount(0, "sat")),
        ),
        (
            FREE_FETCH,
            result({**ANSWERED, "creditsRemaining": 7, "satsPaid": 0}),
            Outcome(
                "no_payment",
                observations=(BalanceObservation("l402-fetch", CREDITS, credits(7), upstream_stale=False),),
            ),
        ),
        (
            {"url": URL, "urls": ["http://localhost:8080/j", URL], "autoPay": True},
            result({**ANSWERED, "creditsRemaining": 0, "satsPaid": 10}),
            Outcome(
                "paid",
                spent=Amount(10, "sat"),
                observations=(
                    BalanceObservation(
                        "l402-fetch",
                        "credits:http://localhost:8080",
                        Amount(0, "credits:http://localhost:8080"),
                        upstream_stale=False,
                    ),
                ),
            ),
        ),
        (
            PAYING_FETCH,
            result(
                {
                    "status": 402,
                    "costSats": 21,
                    "invoice": INVOICE_21_SAT,
                    "paymentHash": HASH,
                    "creditsExhausted": False,
                    "message": "Payment of 21 sats required. Exceeds MAX_AUTO_PAY_SATS (10).",
                }
            ),
            Outcome("not_paid", quotes=(Quote(URL, Amount(21_000, "msat"), HASH, INVOICE_EXPIRES),), payment_id=HASH),
        ),
        (
            FREE_FETCH,
            result(
                {
                    "status": 402,
                    "costSats": 21,
                    "invoice": None,
                    "paymentHash": OTHER_HASH,
                    "creditsExhausted": False,
                    "message": "Payment of 21 sats required. autoPay disabled.",
                }
            ),
            Outcome("no_payment", quotes=(Quote(URL, Amount(21, "sat"), OTHER_HASH),), payment_id=OTHER_HASH),
        ),
        (
            PAYING_FETCH,
            result(
                {
                    "status": 402,
                    "costSats": 21,
                    "invoice": INVOICE_21_SAT,
                    "paymentHash": HASH,
                    "creditsExhausted": True,
                    "message": "Insufficient credits for https://api.example.com. Use l402-buy-credits.",
                }
            ),
            Outcome(
                "not_paid",
                observations=(BalanceObservation("l402-fetch", CREDITS, credits(0), status="exhausted"),),
                quotes=(Quote(URL, Amount(21_000, "msat"), HASH, INVOICE_EXPIRES),),
                payment_id=HASH,
            ),
        ),
        (
            PAYING_FETCH,
            result(
                {
                    "status": 402,
                    "paymentState": "unknown",
                    "costSats": 21,
                    "paymentHash": HASH,
                    "message": "Payment may have executed.",
                },
                error=True,
            ),
            Outcome("unknown", quotes=(Quote(URL, Amount(21, "sat"), HASH),), payment_id=HASH),
        ),
        (
            PAYING_FETCH,
            result(
                {"status": 402, "protocol": "l402", "paymentState": "failed", "costSats": 21, "paymentHash": HASH},
                error=True,
            ),
            Outcome("not_paid", quotes=(Quote(URL, Amount(21, "sat"), HASH),), payment_id=HASH),
        ),
        (
            PAYING_FETCH,
            result(
                {
                    "status": 402,
                    "protocol": "x402",
                    "receiver": "0xabc",
                    "network": "base",
                    "asset": "usdc",
                    "amountUsd": 0.01,
                    "message": "Pay on chain, then call again with txHash.",
                }
            ),
            Outcome("not_paid"),
        ),
        (
            FREE_FETCH,
            result({"status": 402, "protocol": "x402", "amountUsd": 0.01, "message": "Pay on chain."}),
            Outcome("no_payment"),
        ),
    ],
    ids=[
        "paid now, credits reported",
        "credential reused: paid nothing, null credits",
        "free fetch answered, credits observed",
        "credits are the first transport url's origin",
        "402 over the auto-pay cap: not paid, quoted at the invoice's msat",
        "402 with autoPay off: still a quote, in sats",
        "402 credits exhausted: the origin has none left",
        "outcome unknown: in doubt, keyed by the payment hash",
        "payment failed: nothing moved",
        "x402 variant is never auto-paid and quotes no sats",
        "x402 variant on a free fetch",
    ],
)
def test_a_fetch_answer_says_what_was_paid_and_what_was_seen(arguments: JSON, answer: JSON, outcome: Outcome) -> None:
    assert ADAPTER.outcome("l402-fetch", arguments, None, answer) == outcome


@pytest.mark.parametrize(
    ("arguments", "answer", "state", "spent", "problem"),
    [
        (PAYING_FETCH, raw("{not json"), "paid", None, "not JSON"),
        (FREE_FETCH, raw("{not json"), "no_payment", None, "not JSON"),
        (PAYING_FETCH, raw('{"status": 200, "satsPaid": NaN}'), "paid", None, "not JSON"),
        (PAYING_FETCH, {"content": [], "isError": False}, "paid", None, "no text content"),
        (PAYING_FETCH, {"content": [{"type": "image", "data": "x"}]}, "paid", None, "no text content"),
        (PAYING_FETCH, result([1, 2]), "paid", None, "not a JSON object"),
        (PAYING_FETCH, result({"error": "fetch failed"}, error=True), "unknown", None, "failed without saying"),
        (FREE_FETCH, result({"error": "fetch failed"}, error=True), "no_payment", None, "the call failed"),
        (PAYING_FETCH, result({"hello": "world"}), "unknown", None, "not in a documented shape"),
        (PAYING_FETCH, result({**ANSWERED, "satsPaid": "21"}), "paid", Amount(21, "sat"), "satsPaid is a string"),
        (PAYING_FETCH, raw('{"status": 200, "satsPaid": 21.0}'), "paid", Amount(21, "sat"), "written as a decimal"),
        (PAYING_FETCH, raw('{"status": 200, "satsPaid": 21.5}'), "unknown", None, "satsPaid is not a whole number"),
        (PAYING_FETCH, result({**ANSWERED, "satsPaid": -5}), "unknown", None, "satsPaid is negative"),
        (PAYING_FETCH, result({**ANSWERED, "satsPaid": 10**30}), "unknown", None, "satsPaid is too large"),
        (PAYING_FETCH, raw('{"status": 200, "satsPaid": 1e400}'), "unknown", None, "satsPaid is too large"),
        (PAYING_FETCH, result({**ANSWERED, "satsPaid": None}), "unknown", None, "satsPaid is missing"),
        (PAYING_FETCH, result(ANSWERED), "unknown", None, "satsPaid is missing"),
        (PAYING_FETCH, result({**ANSWERED, "satsPaid": True}), "unknown", None, "satsPaid is not a number"),
        (FREE_FETCH, result({**ANSWERED, "satsPaid": 5}), "paid", Amount(5, "sat"), "autoPay was off"),
        (PAYING_FETCH, result({**ANSWERED, "status": "200", "satsPaid": 3}), "paid", Amount(3, "sat"), "status"),
        (
            PAYING_FETCH,
            result({"status": 402, "paymentState": "weird", "paymentHash": HASH}, error=True),
            "unknown",
            None,
            "paymentState is not one of",
        ),
        (
            PAYING_FETCH,
            result({"status": 402, "costSats": 21, "invoice": "lnbc-garbage", "paymentHash": HASH}),
            "not_paid",
            None,
            "the invoice in the result cannot be read",
        ),
    ],
    ids=[
        "malformed json on a paying fetch",
        "malformed json on a free fetch",
        "NaN is not JSON",
        "no content",
        "no text content",
        "a list, not an object",
        "an error on a paying fetch may have paid",
        "an error on a free fetch",
        "an undocumented object",
        "satsPaid as a string",
        "satsPaid as a whole decimal",
        "satsPaid as a fraction",
        "negative satsPaid",
        "huge satsPaid",
        "overflowing satsPaid",
        "null satsPaid",
        "missing satsPaid",
        "boolean satsPaid",
        "a free fetch that paid anyway",
        "status as a string",
        "unknown paymentState",
        "an unreadable invoice in a 402",
    ],
)
def test_a_malformed_fetch_answer_never_raises_and_settles_unreadable_ones_at_the_reservation(
    arguments: JSON, answer: JSON, state: str, spent: Amount | None, problem: str
) -> None:
    outcome = ADAPTER.outcome("l402_fetch", arguments, None, answer)
    assert (outcome.state, outcome.spent) == (state, spent)
    assert outcome.problem is not None and problem in outcome.problem


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [("creditsRemaining", -3, "negative"), ("creditsRemaining", "many", "not a number"), ("creditsRemaining", 1.5, "")],
)
def test_unreadable_credits_on_a_paid_fetch_are_not_observed_but_the_payment_counts(
    field: str, value: object, problem: str
) -> None:
    outcome = ADAPTER.outcome("l402-fetch", PAYING_FETCH, None, result({**ANSWERED, field: value, "satsPaid": 21}))
    assert (outcome.state, outcome.spent, outcome.observations) == ("paid", Amount(21, "sat"), ())
    assert outcome.problem is not None and problem in outcome.problem


def test_a_fetch_answer_after_a_qr_code_is_read() -> None:
    payload = json.dumps({"status": 402, "costSats": 21, "invoice": INVOICE_21_SAT, "paymentHash": HASH}, indent=2)
    answer = raw("█▀▀▀▀▀█ ▄ █\n█ ███ █ ▀▄█\n\n" + payload)
    outcome = ADAPTER.outcome("l402-fetch", PAYING_FETCH, None, answer)
    assert outcome == Outcome(
        "not_paid", quotes=(Quote(URL, Amount(21_000, "msat"), HASH, INVOICE_EXPIRES),), payment_id=HASH
    )


def test_a_problem_never_repeats_a_secret_from_the_answer() -> None:
    secret = "lnbc-secret-macaroon-AgELbG9jYWxob3N0"
    outcome = ADAPTER.outcome(
        "l402-fetch", PAYING_FETCH, None, result({"status": 402, "invoice": secret, "paymentState": secret})
    )
    assert outcome.state == "unknown"
    assert outcome.problem is not None and secret not in outcome.problem and "AgEL" not in outcome.problem


# --- l402-pay outcomes -----------------------------------------------------------------------------

PAID = {"paid": True, "paymentState": "paid", "credentialsStored": True, "method": "nwc"}


@pytest.mark.parametrize(
    ("arguments", "answer", "outcome"),
    [
        ({"invoice": INVOICE_21_SAT}, result(PAID), Outcome("paid", spent=Amount(21_000, "msat"), payment_id=HASH)),
        (
            {"invoice": make_invoice(1_500)},
            result({"paid": True, "credentialsStored": True, "method": "human"}),
            Outcome("paid", spent=Amount(1_500, "msat"), payment_id=HASH),
        ),
        (
            {"invoice": AMOUNTLESS},
            result(PAID),
            Outcome("paid", spent=None, payment_id=HASH, problem="amount unknown"),
        ),
        (
            # 402-mcp never names the amount of a payment by hash: the hold's price (its quote) is counted.
            {"paymentHash": OTHER_HASH},
            result(PAID),
            Outcome("paid", spent=None, payment_id=OTHER_HASH),
        ),
        (
            # What our reading did not expect (captures paywall-limits-07): 402-mcp's refusals before paying
            # name no paymentState at all, only `reason`.
            {"paymentHash": OTHER_HASH},
            result({"paid": False, "reason": "Per-minute spend limit reached."}, error=True),
            Outcome("not_paid", payment_id=OTHER_HASH),
        ),
        (
            {"invoice": INVOICE_21_SAT},
            result({"paid": False, "paymentState": "failed", "credentialsStored": False, "method": "nwc"}),
            Outcome("not_paid", payment_id=HASH),
        ),
        (
            {"invoice": INVOICE_21_SAT},
            result({"paid": False, "paymentState": "unknown", "method": "nwc", "reason": "timeout"}, error=True),
            Outcome("unknown", payment_id=HASH),
        ),
        (
            {"invoice": INVOICE_21_SAT},
            result({"error": "socket hang up", "paymentState": "unknown", "paymentHash": HASH}, error=True),
            Outcome("unknown", payment_id=HASH),
        ),
        (
            {"paymentHash": OTHER_HASH},
            result({"paid": False, "paymentState": "unknown", "paymentHash": OTHER_HASH}, error=True),
            Outcome("unknown", payment_id=OTHER_HASH),
        ),
    ],
    ids=[
        "paid: spent the invoice's amount",
        "paid by a human, no paymentState",
        "paid an amountless invoice: amount unknown",
        "paid by cached paymentHash: the hold's price counts",
        "refused before paying: paid false with only a reason",
        "failed: nothing moved",
        "unknown: in doubt",
        "threw after reserving: in doubt",
        "unknown by cached paymentHash",
    ],
)
def test_a_pay_answer_settles_at_the_invoice_amount_or_stays_in_doubt(
    arguments: JSON, answer: JSON, outcome: Outcome
) -> None:
    assert ADAPTER.outcome("l402-pay", arguments, None, answer) == outcome


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (result({"paid": False, "reason": "timeout", "method": "nwc"}, error=True), "paymentState"),
        (result({"paid": False}, error=True), "paymentState"),
        (result({"paid": True, "paymentState": "failed"}), "disagree"),
        (result({"paid": False, "paymentState": "paid"}), "disagree"),
        (result({"paid": "yes"}), "not in a documented shape"),
        (result({"paid": True, "paymentState": 7}), "paymentState is not one of"),
    ],
    ids=[
        "paid false with more than a reason",
        "paid false alone",
        "paid but failed",
        "not paid but paid",
        "paid as a string",
        "odd",
    ],
)
def test_a_pay_answer_that_does_not_prove_the_outcome_is_unknown(answer: JSON, problem: str) -> None:
    outcome = ADAPTER.outcome("l402_pay", {"invoice": INVOICE_21_SAT}, None, answer)
    assert (outcome.state, outcome.spent, outcome.payment_id) == ("unknown", None, HASH)
    assert outcome.problem is not None and problem in outcome.problem


# --- l402-buy-credits and l402-redeem-cashu outcomes -----------------------------------------------

BUY = {"url": URL, "amountSats": 500}
TIERS = {"tiers": [{"amountSats": 500, "creditSats": 550}, {"amountSats": 1000, "creditSats": 1200}]}


@pytest.mark.parametrize(
    ("arguments", "answer", "outcome"),
    [
        ({"url": URL}, result(TIERS), Outcome("no_payment")),
        ({"url": URL}, result({"error": "Expected 402 but got 200."}, error=True), Outcome("no_payment")),
        (
            BUY,
            result(
                {"paid": True, "amountSats": 500, "creditsReceived": 550, "credentialsStored": True, "method": "nwc"}
            ),
            Outcome("paid", spent=Amount(500, "sat")),
        ),
        (
            BUY,
            result({"paid": True, "amountSats": 500, "creditsReceived": None, "credentialsStored": True}),
            Outcome("paid", spent=Amount(500, "sat")),
        ),
        (
            BUY,
            result({"paid": False, "paymentState": "unknown", "amountSats": 500, "paymentHash": HASH}, error=True),
            Outcome("unknown", payment_id=HASH),
        ),
        (BUY, result({"paid": False, "paymentState": "failed"}), Outcome("not_paid")),
        (BUY, result(TIERS), Outcome("not_paid")),
        (
            BUY,
            result({"paid": False, "invoice": INVOICE_21_SAT, "paymentHash": HASH, "costSats": 500}),
            # Its price is remembered by its hash (the invoice's exact amount) for the `l402-pay` that follows.
            Outcome("not_paid", quotes=(Quote(None, Amount(21_000, "msat"), HASH, INVOICE_EXPIRES),), payment_id=HASH),
        ),
        (
            BUY,
            result({"error": "Amount 500 sats exceeds per-request limit (50 sats). Reduce the amount."}, error=True),
            Outcome("not_paid"),
        ),
        (BUY, result({"error": "Per-minute spend limit reached."}, error=True), Outcome("not_paid")),
        (BUY, result({"paid": False, "reason": "Payment failed"}, error=True), Outcome("not_paid")),
        (
            BUY,
            result({"error": "socket hang up"}, error=True),
            Outcome("unknown", problem="the call failed without saying whether it paid"),
        ),
    ],
    ids=[
        "tiers listed",
        "tiers not listed",
        "bought: spent amountSats",
        "bought, credits not reported",
        "unknown: in doubt",
        "failed",
        "tiers on a purchase: nothing bought",
        "a human's invoice handed back",
        "over 402-mcp's own per-request limit: refused before paying",
        "over 402-mcp's per-minute limit: refused before paying",
        "the wallet said it did not pay",
        "any other error: the wallet may have paid",
    ],
)
def test_a_buy_credits_answer_settles_at_amount_sats(arguments: JSON, answer: JSON, outcome: Outcome) -> None:
    assert ADAPTER.outcome("l402-buy-credits", arguments, None, answer) == outcome


@pytest.mark.parametrize(
    ("answer", "state", "spent", "problem"),
    [
        (result({"paid": True, "amountSats": "500"}), "paid", Amount(500, "sat"), "amountSats is a string"),
        (result({"paid": True}), "paid", Amount(500, "sat"), "the amount asked for is counted"),
        (result({"paid": True, "amountSats": -500}), "paid", Amount(500, "sat"), "amountSats is negative"),
        (result({"paid": True, "amountSats": 600}), "paid", Amount(600, "sat"), "differs from the amount asked"),
        (result({"error": "Invoice payment threw"}, error=True), "unknown", None, "failed without saying"),
        (raw("oops"), "paid", None, "not JSON"),
        (result({"paid": None}), "unknown", None, "not in a documented shape"),
    ],
    ids=["amount as a string", "amount missing", "amount negative", "amount differs", "error", "plain text", "odd"],
)
def test_an_odd_buy_credits_answer_is_flagged(answer: JSON, state: str, spent: Amount | None, problem: str) -> None:
    outcome = ADAPTER.outcome("l402_buy_credits", BUY, None, answer)
    assert (outcome.state, outcome.spent) == (state, spent)
    assert outcome.problem is not None and problem in outcome.problem


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (result({"redeemed": True, "creditsReceived": None, "credentialsStored": True}), Outcome("paid")),
        (result({"redeemed": True, "creditsReceived": 100, "credentialsStored": True}), Outcome("paid")),
    ],
)
def test_a_redeemed_cashu_token_is_paid_at_an_unreported_value(answer: JSON, outcome: Outcome) -> None:
    assert (
        ADAPTER.outcome("l402-redeem-cashu", {"url": URL, "token": "cashuAeyJ0b2tlbiI6W119"}, None, answer) == outcome
    )


@pytest.mark.parametrize(
    "answer",
    [
        result({"error": "Cashu redemption failed (HTTP 500)"}, error=True),
        result({"redeemed": False}),
    ],
)
def test_a_cashu_redemption_that_is_not_confirmed_is_unknown(answer: JSON) -> None:
    token = "cashuAeyJ0b2tlbiI6W119"
    outcome = ADAPTER.outcome("l402_redeem_cashu", {"url": URL, "token": token}, None, answer)
    assert (outcome.state, outcome.spent) == ("unknown", None)
    assert outcome.problem is not None and token not in outcome.problem


# --- l402-balance and l402-credentials outcomes ----------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "answer", "observation"),
    [
        (
            {"origin": ORIGIN},
            result(
                {"origin": ORIGIN, "creditsRemaining": 42, "lastUpdated": "2025-01-02T03:04:05.678Z", "stale": False}
            ),
            BalanceObservation(
                "l402-balance",
                CREDITS,
                credits(42),
                upstream_time=datetime(2025, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC),
                upstream_stale=False,
            ),
        ),
        (
            {"origin": URL},
            result({"origin": ORIGIN, "creditsRemaining": None, "lastUpdated": "2025-01-02T03:04:05Z", "stale": True}),
            BalanceObservation(
                "l402-balance",
                CREDITS,
                None,
                upstream_time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
                upstream_stale=True,
            ),
        ),
        (
            {"origin": ORIGIN},
            result(
                {"origin": ORIGIN, "creditsRemaining": 0, "lastUpdated": "2025-01-02T05:04:05+02:00", "stale": True}
            ),
            BalanceObservation(
                "l402-balance",
                CREDITS,
                credits(0),
                upstream_time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
                upstream_stale=True,
            ),
        ),
        (
            {"origin": "http://localhost:8080/"},
            result({"creditsRemaining": 5, "lastUpdated": "2025-01-02T03:04:05Z", "stale": False}),
            BalanceObservation(
                "l402-balance",
                "credits:http://localhost:8080",
                Amount(5, "credits:http://localhost:8080"),
                upstream_time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
                upstream_stale=False,
            ),
        ),
        (
            {"origin": ORIGIN},
            result({"error": f"No stored credentials for {ORIGIN}"}, error=True),
            BalanceObservation("l402-balance", CREDITS, None, status="no-credentials"),
        ),
        (
            {},
            result({"error": "No stored credentials for https://API.example.com"}, error=True),
            BalanceObservation("l402-balance", CREDITS, None, status="no-credentials"),
        ),
    ],
    ids=[
        "credits with a fresh time",
        "null credits, stale",
        "a time with an offset is converted to UTC",
        "origin from the arguments when the answer has none",
        "no stored credentials",
        "no stored credentials, origin from the message",
    ],
)
def test_a_balance_answer_is_an_observation_of_the_origins_credits(
    arguments: JSON, answer: JSON, observation: BalanceObservation
) -> None:
    assert ADAPTER.outcome("l402-balance", arguments, None, answer) == Outcome(
        "no_payment", observations=(observation,)
    )


@pytest.mark.parametrize(
    ("answer", "amount", "when", "stale", "problem"),
    [
        (
            {"creditsRemaining": "42", "lastUpdated": "2025-01-02T03:04:05Z", "stale": False},
            credits(42),
            True,
            False,
            "a string",
        ),
        (
            {"creditsRemaining": -1, "lastUpdated": "2025-01-02T03:04:05Z", "stale": False},
            None,
            True,
            False,
            "negative",
        ),
        ({"creditsRemaining": 2**64, "lastUpdated": "2025-01-02T03:04:05Z"}, None, True, None, "too large"),
        ({"creditsRemaining": 1, "lastUpdated": "yesterday", "stale": False}, credits(1), False, False, "ISO-8601"),
        (
            {"creditsRemaining": 1, "lastUpdated": "2025-01-02T03:04:05", "stale": False},
            credits(1),
            False,
            False,
            "zone",
        ),
        ({"creditsRemaining": 1, "lastUpdated": 1735787045, "stale": False}, credits(1), False, False, "not a time"),
        (
            {"creditsRemaining": 1, "lastUpdated": "2025-01-02T03:04:05Z", "stale": "no"},
            credits(1),
            True,
            None,
            "stale",
        ),
    ],
    ids=[
        "credits as a string",
        "negative",
        "huge",
        "a word for a time",
        "no zone",
        "epoch number",
        "stale as a string",
    ],
)
def test_an_odd_balance_answer_keeps_what_it_can_and_flags_the_rest(
    answer: JSON, amount: Amount | None, when: bool, stale: bool | None, problem: str
) -> None:
    outcome = ADAPTER.outcome("l402_balance", {"origin": ORIGIN}, None, result({"origin": ORIGIN, **answer}))
    assert outcome.state == "no_payment"
    (observation,) = outcome.observations
    assert (observation.key, observation.amount, observation.upstream_stale) == (CREDITS, amount, stale)
    assert (observation.upstream_time is not None) == when
    assert outcome.problem is not None and problem in outcome.problem


@pytest.mark.parametrize(
    "answer",
    [
        raw("{oops"),
        result({"error": "boom"}, error=True),
        result([]),
        result({"origin": "not a url", "creditsRemaining": 1}),
    ],
)
def test_an_unreadable_balance_answer_observes_nothing(answer: JSON) -> None:
    outcome = ADAPTER.outcome("l402-balance", {"origin": "neither"}, None, answer)
    assert (outcome.state, outcome.observations) == ("no_payment", ())
    assert outcome.problem is not None


def test_credentials_give_one_observation_per_origin_the_last_used_counting() -> None:
    answer = result(
        {
            "credentials": [
                {
                    "origin": ORIGIN,
                    "paymentHash": HASH,
                    "creditBalance": 10,
                    "storedAt": "2025-01-01T00:00:00Z",
                    "lastUsed": "2025-01-01T00:00:00Z",
                    "server": "toll-booth",
                },
                {
                    "origin": "https://other.example.org",
                    "paymentHash": OTHER_HASH,
                    "creditBalance": None,
                    "storedAt": "2025-01-01T00:00:00Z",
                    "lastUsed": "2025-01-03T00:00:00Z",
                    "server": None,
                },
                {
                    "origin": "https://API.example.com/",
                    "paymentHash": OTHER_HASH,
                    "creditBalance": 30,
                    "storedAt": "2025-01-02T00:00:00Z",
                    "lastUsed": "2025-01-02T00:00:00Z",
                    "server": "toll-booth",
                },
                {"origin": "02" + "ab" * 32, "creditBalance": 99, "lastUsed": "2025-01-04T00:00:00Z"},
            ]
        }
    )
    assert ADAPTER.outcome("l402_credentials", {}, None, answer) == Outcome(
        "no_payment",
        observations=(
            BalanceObservation(
                "l402-credentials", CREDITS, credits(30), upstream_time=datetime(2025, 1, 2, tzinfo=UTC)
            ),
            BalanceObservation(
                "l402-credentials",
                "credits:https://other.example.org",
                None,
                upstream_time=datetime(2025, 1, 3, tzinfo=UTC),
            ),
        ),
        proven_paid=(HASH, OTHER_HASH),  # a stored credential proves its invoice was paid
    )


@pytest.mark.parametrize(
    ("answer", "count", "problem"),
    [
        (result({"credentials": []}), 0, None),
        (result({"credentials": ["x", {"origin": ORIGIN, "creditBalance": -2}]}), 1, "not an object"),
        (result({"credentials": None}), 0, "not in a documented shape"),
        (raw("[]]"), 0, "not JSON"),
    ],
)
def test_odd_credentials_answers_never_raise(answer: JSON, count: int, problem: str | None) -> None:
    outcome = ADAPTER.outcome("l402-credentials", {}, None, answer)
    assert (outcome.state, len(outcome.observations)) == ("no_payment", count)
    assert outcome.problem == problem or (problem is not None and outcome.problem and problem in outcome.problem)


# --- previews and discovery: quotes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "arguments", "answer", "quotes"),
    [
        (
            "l402-fetch-preview",
            {"url": URL},
            result(
                {
                    "status": "preview",
                    "endpoint": URL,
                    "protocol": "l402",
                    "costSats": 10,
                    "paymentMethod": "nwc",
                    "paymentHash": HASH,
                    "expiresAt": 1735787045000,
                    "message": "Payment of 10 sats required.",
                }
            ),
            (Quote(URL, Amount(10, "sat"), HASH, datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)),),
        ),
        (
            "l402_fetch_preview",
            {"url": URL, "urls": [URL, "https://b.example.com/x", "https://c.example.com/y"]},
            result(
                [
                    {"status": "preview", "endpoint": URL, "protocol": "l402", "costSats": 10, "paymentHash": HASH},
                    {"status": "free", "endpoint": "https://b.example.com/x", "statusCode": 200},
                    {"status": "preview", "endpoint": "https://c.example.com/y", "protocol": "xcashu", "costSats": 3},
                ]
            ),
            (Quote(URL, Amount(10, "sat"), HASH), Quote("https://c.example.com/y", Amount(3, "sat"))),
        ),
        (
            "l402-fetch-preview",
            {"url": URL},
            result({"status": "preview", "endpoint": URL, "protocol": "x402", "costUsd": 0.01, "message": "$0.01"}),
            (),
        ),
        (
            "l402-fetch-preview",
            {"url": URL},
            result({"status": "preview", "endpoint": URL, "protocol": "l402", "costSats": None, "paymentHash": HASH}),
            (),
        ),
        (
            "l402-fetch-preview",
            {"url": URL},
            result({"status": "error", "endpoint": URL, "statusCode": 402, "message": "no challenge"}),
            (),
        ),
        (
            "l402-discover",
            {"url": URL},
            result(
                {
                    "url": URL,
                    "costSats": 21,
                    "invoice": INVOICE_21_SAT,
                    "macaroon": "AgELbG9jYWxob3N0",
                    "paymentHash": HASH,
                    "server": "toll-booth",
                }
            ),
            (Quote(URL, Amount(21_000, "msat"), HASH, INVOICE_EXPIRES),),
        ),
        (
            "l402_discover",
            {"url": URL},
            result({"url": URL, "costSats": 99, "invoice": make_invoice(20_500), "paymentHash": HASH}),
            (Quote(URL, Amount(20_500, "msat"), HASH, INVOICE_EXPIRES),),
        ),
        (
            "l402-discover",
            {"url": URL},
            result({"url": URL, "costSats": 21, "invoice": AMOUNTLESS, "paymentHash": HASH}),
            (Quote(URL, Amount(21, "sat"), HASH, INVOICE_EXPIRES),),
        ),
    ],
    ids=[
        "preview in sats",
        "batch preview",
        "preview in usd: no quote",
        "preview of unknown cost: no quote",
        "preview error: no quote",
        "discover: the invoice's exact amount",
        "discover: the invoice wins over costSats",
        "discover of an amountless invoice: costSats",
    ],
)
def test_a_preview_or_discover_answer_is_remembered_as_a_quote(
    tool: str, arguments: JSON, answer: JSON, quotes: tuple[Quote, ...]
) -> None:
    assert ADAPTER.outcome(tool, arguments, None, answer) == Outcome("no_payment", quotes=quotes)


def test_a_quote_expires_at_the_earlier_of_the_invoices_expiry_and_the_previews_expires_at() -> None:
    invoice = expiring_invoice(1_700_000_000, 600)  # expires 1 700 000 600
    for expires_at, expires in [
        (1_700_000_300_000, datetime.fromtimestamp(1_700_000_300, UTC)),
        (1_700_000_900_000, datetime.fromtimestamp(1_700_000_600, UTC)),
    ]:
        answer = result({"url": URL, "costSats": 1, "invoice": invoice, "paymentHash": HASH, "expiresAt": expires_at})
        [quote] = ADAPTER.outcome("l402-discover", {"url": URL}, None, answer).quotes
        assert quote.expires == expires


@pytest.mark.parametrize(
    ("expires_at", "problem"),
    [
        ("1735787045000", "expiresAt is not a time in epoch milliseconds"),
        (1735787045000.5, "expiresAt is not a time in epoch milliseconds"),
        (-1, "expiresAt is not a time in epoch milliseconds"),
        (10**18, "expiresAt is out of range"),
    ],
)
def test_a_preview_whose_expires_at_cannot_be_read_quotes_without_it_and_is_flagged(
    expires_at: object, problem: str
) -> None:
    answer = result({"status": "preview", "endpoint": URL, "costSats": 10, "expiresAt": expires_at})
    outcome = ADAPTER.outcome("l402-fetch-preview", {"url": URL}, None, answer)
    assert outcome.quotes == (Quote(URL, Amount(10, "sat")),)
    assert outcome.problem is not None and problem in outcome.problem


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (result({"status": "preview", "endpoint": URL, "costSats": "10"}), "costSats is a string"),
        (result({"status": "preview", "endpoint": URL, "costSats": -10}), "costSats is negative"),
        (raw("nope"), "not JSON"),
        (result(["x"]), "not a JSON object"),
    ],
)
def test_an_odd_preview_answer_is_flagged(answer: JSON, problem: str) -> None:
    outcome = ADAPTER.outcome("l402-fetch-preview", {"url": URL}, None, answer)
    assert outcome.state == "no_payment"
    assert outcome.problem is not None and problem in outcome.problem


@pytest.mark.parametrize(
    "tool", ["l402-config", "l402-search", "l402-store-token", "l402_config", "l402_search", "l402_store_token"]
)
def test_answers_of_tools_that_reveal_no_price_or_balance_are_no_payment(tool: str) -> None:
    answer = result({"nwcConfigured": True, "cashuBalanceSats": 5, "stored": True, "origin": ORIGIN})
    assert ADAPTER.outcome(tool, {}, None, answer) == Outcome("no_payment")


# --- refresh ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "refresh"),
    [
        (CREDITS, Refresh("l402-balance", {"origin": ORIGIN})),
        ("credits:http://localhost:8080", Refresh("l402-balance", {"origin": "http://localhost:8080"})),
        ("credits:", None),
        ("wallet:alby", None),
        ("quote:https://api.example.com/v1/joke", None),
        ("p402:sess_1", None),
    ],
)
def test_credits_are_refreshed_by_l402_balance_for_their_origin(key: str, refresh: Refresh | None) -> None:
    assert ADAPTER.refresh(key) == refresh


def test_the_adapter_is_named_402_mcp() -> None:
    assert ADAPTER.name == "402-mcp"


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("l402-fetch", PAYING_FETCH),
        ("l402-pay", {"invoice": INVOICE_21_SAT}),
        ("l402-buy-credits", {"url": URL, "amountSats": 500}),
        ("l402-redeem-cashu", {"url": URL, "token": "cashuAeyJ0b2tlbiI6W119"}),
    ],
)
def test_an_unreadable_answer_to_a_paying_call_counts_as_paid_at_the_reservation_and_is_flagged(
    tool: str, arguments: JSON
) -> None:
    outcome = ADAPTER.outcome(tool, arguments, None, raw("Payment done!"))
    assert (outcome.state, outcome.spent) == ("paid", None)  # the gate settles at what it reserved
    assert outcome.problem is not None and "not JSON" in outcome.problem
