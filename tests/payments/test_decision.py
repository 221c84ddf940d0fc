"""The money decision (`Payments.bound`): the adapter's reading and its refusal, whether a call pays, its
price in order (the call's own → the policy's → a live quote, asked of the upstream when there is none →
max_price → no price, no pay), the max_price cap, and the budgets that count it. The balance checks are
tests/payments/test_balances.py."""

from __future__ import annotations

from typing import Any

import pytest

from guard.errors import UpstreamError
from guard.payments.adapters import family_adapters, x402_adapter
from guard.payments.adapters._facts import Prepared, Refresh
from guard.payments.adapters.l402_mcp import L402Mcp
from guard.payments.decision import Bound
from guard.payments.payments import Payments
from guard.policy.rules import Denial, Policy
from ledgers import Amount, Budget, Ledger, Window
from tests.payments.doubles import WHO, FakeLink, StubAdapter, call, policy, text_result

pytestmark = pytest.mark.anyio

JSON = dict[str, Any]
URL = "https://shop.example/item"
SAT_AND_USD_BUDGETS = """\
version: 1
default: allow
budgets:
  - {name: sats, limit: 100000 sat}
  - {name: dollars, limit: 100 usd, scope: identity}
"""


def tools(rules: str, budgets: str = SAT_AND_USD_BUDGETS) -> Policy:
    return policy(budgets + "tools:\n" + rules)


async def decide(
    ledger: Ledger, rules: Policy, name: str, arguments: JSON | None = None, *adapters: Any, **options: Any
) -> Bound | Denial:
    link = options.pop("link", None)
    payments = Payments(ledger, list(adapters), **options)
    return await payments.bound(rules, call(name, arguments), WHO, link)


def bound_of(decision: Bound | Denial) -> Bound:
    assert isinstance(decision, Bound), decision
    return decision


def denial_of(decision: Bound | Denial) -> Denial:
    assert isinstance(decision, Denial), decision
    return decision


# --- whether it pays ------------------------------------------------------------------------------------


async def test_a_call_that_does_not_pay_is_bound_to_nothing(ledger: Ledger) -> None:
    money = bound_of(await decide(ledger, tools("  browse: {}\n"), "browse"))
    assert (money.price, money.priced_by, money.budgets) == (None, None, ())


async def test_the_adapters_word_on_paying_wins_over_the_policys(ledger: Ledger) -> None:
    rules = tools("  l402-fetch: {pays: true, max_price: 50 sat}\n")
    free = bound_of(await decide(ledger, rules, "l402-fetch", {"url": URL}, L402Mcp()))  # autoPay off: no payment
    paying = bound_of(await decide(ledger, rules, "l402-fetch", {"url": URL, "autoPay": True}, L402Mcp()))
    assert free.price is None
    assert (paying.price, paying.priced_by) == (Amount(50, "sat"), "max_price")


async def test_an_adapters_refusal_denies_the_call(ledger: Ledger) -> None:
    rules = tools("  l402-pay: {pays: true, max_price: 50 sat}\n")
    denial = denial_of(await decide(ledger, rules, "l402-pay", {"invoice": "lnbc-not-an-invoice"}, L402Mcp()))
    assert (denial.rule, denial.kind) == ("adapters.402-mcp", "adapter")
    assert denial.reason.startswith("l402-pay: ")


async def test_a_variant_of_a_paying_tools_name_is_refused_never_let_through_unpriced(ledger: Ledger) -> None:
    denial = denial_of(await decide(ledger, tools("  '*': {}\n"), "L402\u2010PAY", {}, *family_adapters()))
    assert (denial.rule, denial.kind) == ("adapters.402-mcp", "adapter")
    assert denial.reason == "'L402\u2010PAY' is a variant of 402-mcp's tool 'l402-pay': call it by its exact name"


async def test_an_x402_payment_is_read_by_x402_whatever_family_knows_the_tool(ledger: Ledger) -> None:
    payment = {
        "x402Version": 2,
        "accepted": {
            "scheme": "exact",
            "network": "eip155:8453",
            "amount": "2500",
            "asset": "0x833589fcd6edb6e08f4c7c32d4f71b54bda02913",
            "payTo": "0x" + "1" * 40,
        },
        "payload": {"authorization": {"value": "2500", "nonce": "0x" + "ab" * 32}},
    }
    rules = policy("version: 1\ndefault: allow\nbudgets: [{name: usdc, limit: 1 usdc}]\n")
    payments = Payments(ledger, family_adapters(), x402_adapter())
    money = bound_of(await payments.bound(rules, call("l402-balance", {}, {"x402/payment": payment}), WHO, None))
    assert (money.price, money.priced_by, money.payment_id) == (Amount(2500, "usdc"), "call", "0x" + "ab" * 32)
    assert money.reading.adapter is not None and money.reading.adapter.name == "x402"


# --- the price, in order -----------------------------------------------------------------------------------


async def test_the_calls_own_price_comes_first(ledger: Ledger) -> None:
    adapter = StubAdapter(Prepared(pays=True, price=Amount(5, "sat"), quote_for=URL))
    ledger.remember_quote(URL, Amount(30, "sat"))
    money = bound_of(await decide(ledger, tools("  buy: {pays: true, price: 10 sat}\n"), "buy", {}, adapter))
    assert (money.price, money.priced_by) == (Amount(5, "sat"), "call")


async def test_the_policys_price_comes_before_a_quote(ledger: Ledger) -> None:
    adapter = StubAdapter(Prepared(pays=True, quote_for=URL))
    ledger.remember_quote(URL, Amount(30, "sat"))
    money = bound_of(await decide(ledger, tools("  buy: {pays: true, price: 10 sat}\n"), "buy", {}, adapter))
    assert (money.price, money.priced_by) == (Amount(10, "sat"), "policy")


async def test_a_live_quote_for_the_resource_comes_before_max_price(ledger: Ledger) -> None:
    adapter = StubAdapter(Prepared(pays=True, quote_for=URL + "?api_key=sk_live_0123456789abcdef"))
    ledger.remember_quote(URL, Amount(30, "sat"))  # quotes are keyed by the URL's public form
    money = bound_of(await decide(ledger, tools("  buy: {pays: true, max_price: 50 sat}\n"), "buy", {}, adapter))
    assert (money.price, money.priced_by) == (Amount(30, "sat"), "quote")


async def test_with_no_live_quote_guard_asks_the_upstream_for_a_preview_and_prices_by_it(ledger: Ledger) -> None:
    link = FakeLink({"l402-fetch-preview": text_result({"status": "preview", "endpoint": URL, "costSats": 20})})
    rules = tools("  l402-fetch: {pays: true, max_price: 50 sat}\n")
    fetch = {"url": URL, "autoPay": True, "method": "POST"}
    money = bound_of(await decide(ledger, rules, "l402-fetch", fetch, L402Mcp(), link=link))
    assert (money.price, money.priced_by, money.resource) == (Amount(20, "sat"), "quote", URL)
    assert link.calls == [("l402-fetch-preview", {"url": URL, "method": "POST"})]
    quote = ledger.quote(URL)
    assert quote is not None and quote.amount == Amount(20, "sat")  # remembered for the next call


@pytest.mark.parametrize(
    "preview",
    [
        text_result({"status": "free", "endpoint": URL, "statusCode": 200}),
        UpstreamError(-32603, "the upstream failed"),
        text_result("not an object"),
    ],
    ids=["a free resource names no price", "the preview fails", "an unreadable preview"],
)
async def test_a_preview_that_names_no_price_leaves_max_price_to_bound_the_call(ledger: Ledger, preview: Any) -> None:
    link = FakeLink({"l402-fetch-preview": preview})
    rules = tools("  l402-fetch: {pays: true, max_price: 50 sat}\n")
    money = bound_of(await decide(ledger, rules, "l402-fetch", {"url": URL, "autoPay": True}, L402Mcp(), link=link))
    assert (money.price, money.priced_by) == (Amount(50, "sat"), "max_price")
    assert len(link.calls) == 1


async def test_an_adapter_that_cannot_read_the_preview_leaves_max_price(ledger: Ledger) -> None:
    how = Refresh("preview", {"url": URL})
    adapter = StubAdapter(Prepared(pays=True, quote_for=URL, quote_with=how), answer=RuntimeError("adapter bug"))
    link = FakeLink({"preview": text_result({})})
    rules = tools("  buy: {pays: true, max_price: 50 sat}\n")
    money = bound_of(await decide(ledger, rules, "buy", {}, adapter, link=link))
    assert (money.price, money.priced_by) == (Amount(50, "sat"), "max_price")


async def test_a_session_with_no_link_asks_for_no_preview(ledger: Ledger) -> None:
    rules = tools("  l402-fetch: {pays: true, max_price: 50 sat}\n")
    money = bound_of(await decide(ledger, rules, "l402-fetch", {"url": URL, "autoPay": True}, L402Mcp()))
    assert money.priced_by == "max_price"


@pytest.mark.parametrize(
    ("rules", "arguments", "price", "priced_by"),
    [
        ("  t: {pays: true, price: 100 sat}\n", {}, Amount(100, "sat"), "policy"),
        ("  t: {pays: true, price: 2.50 usd}\n", {}, Amount(2_500_000, "usd_micro"), "policy"),
        ("  t: {pays: true, price_from: amount, price_unit: sat}\n", {"amount": 21}, Amount(21, "sat"), "policy"),
        (
            "  t: {pays: true, price_from: amount, price_unit: msat}\n",
            {"amount": "1500"},
            Amount(1500, "msat"),
            "policy",
        ),
        (
            "  t: {pays: true, price_from: args.invoice.sats, price_unit: sat}\n",
            {"invoice": {"sats": 7}},
            Amount(7, "sat"),
            "policy",
        ),
        (
            "  t: {pays: true, price_from: amount, price_unit: usd, max_price: 5 usd}\n",
            {"amount": 0.25},
            Amount(250_000, "usd_micro"),
            "policy",
        ),
        (
            "  t: {pays: true, price_from: amount, price_unit: sat, max_price: 1000 sat}\n",
            {},
            Amount(1000, "sat"),
            "max_price",
        ),
        ("  t: {pays: true, max_price: 1000 sat}\n", {}, Amount(1000, "sat"), "max_price"),
        ("  t: {}\n  '*': {pays: true, price: 5 sat}\n", {}, Amount(5, "sat"), "policy"),
        ("  t: {pays: true, price: 9 sat}\n  '*': {pays: true, price: 5 sat}\n", {}, Amount(9, "sat"), "policy"),
        ("  t: {}\n  '*': {pays: true, max_price: 50 sat}\n", {}, Amount(50, "sat"), "max_price"),
    ],
    ids=[
        "fixed",
        "fixed-decimal-unit",
        "price-from",
        "price-from-numeric-string",
        "price-from-nested",
        "price-from-in-a-decimal-unit-reads-a-fraction",
        "price-from-missing-falls-back-to-max-price",
        "max-price-only",
        "star-price",
        "own-price-before-star",
        "star-max-price",
    ],
)
async def test_the_policy_prices_a_call_no_adapter_reads(
    ledger: Ledger, rules: str, arguments: JSON, price: Amount, priced_by: str
) -> None:
    money = bound_of(await decide(ledger, tools(rules), "t", arguments))
    assert (money.price, money.priced_by) == (price, priced_by)


@pytest.mark.parametrize(
    ("rules", "arguments", "why"),
    [
        ("  t: {pays: true}\n", {}, "the price of t is unknown and the policy sets no max_price for it"),
        (
            "  t: {pays: true, price_from: amount, price_unit: sat}\n",
            {},
            "the price of t is unknown and the policy sets no max_price for it",
        ),
        (
            "  t: {pays: true, price_from: amount, price_unit: sat, max_price: 10 sat}\n",
            {"amount": "lots"},
            "argument amount must be a number ≥ 0",
        ),
        (
            "  t: {pays: true, price_from: amount, price_unit: sat, max_price: 10 sat}\n",
            {"amount": -5},
            "argument amount must be a number ≥ 0",
        ),
        (
            "  t: {pays: true, max_price: 10 sat}\n  '*': {pays: true, max_price: 1 usd}\n",
            {},
            "the max_price caps for t are in units that do not compare",
        ),
    ],
    ids=[
        "no-price-no-cap",
        "price-argument-missing-and-no-cap",
        "unreadable-price-argument",
        "negative-price-argument",
        "caps-that-do-not-compare",
    ],
)
async def test_a_price_that_cannot_be_bounded_is_no_price_no_pay(
    ledger: Ledger, rules: str, arguments: JSON, why: str
) -> None:
    denial = denial_of(await decide(ledger, tools(rules), "t", arguments))
    assert (denial.rule, denial.reason, denial.kind) == ("tools.t", f"no price, no pay: {why}", "price")


# --- the cap and the budgets -------------------------------------------------------------------------------


async def test_a_price_over_max_price_is_refused(ledger: Ledger) -> None:
    rules = tools("  buy: {pays: true, price_from: amount, price_unit: sat, max_price: 60 sat}\n")
    assert bound_of(await decide(ledger, rules, "buy", {"amount": 60})).price == Amount(60, "sat")
    denial = denial_of(await decide(ledger, rules, "buy", {"amount": 61}))
    assert (denial.rule, denial.kind) == ("tools.buy.max_price", "price")
    assert denial.reason == "the price 61 sat is over the per-call cap of 60 sat"


async def test_a_price_in_a_unit_max_price_does_not_compare_with_is_refused(ledger: Ledger) -> None:
    adapter = StubAdapter(Prepared(pays=True, price=Amount(5, "usd_micro")))
    denial = denial_of(await decide(ledger, tools("  buy: {pays: true, max_price: 60 sat}\n"), "buy", {}, adapter))
    assert (denial.rule, denial.reason, denial.kind) == (
        "tools.buy.max_price",
        "the price is in usd_micro, max_price in sat, and no rate converts one to the other",
        "price",
    )
    assert denial.price == Amount(5, "usd_micro")  # the call event keeps the price asked


async def test_only_the_budgets_in_a_unit_the_price_converts_to_count_it(ledger: Ledger) -> None:
    rules = tools("  buy: {pays: true, price: 1500 msat}\n")
    money = bound_of(await decide(ledger, rules, "buy"))
    assert money.budgets == (Budget("sats", Amount(100_000, "sat"), "session:s1", Window.parse("session")),)


async def test_a_payment_no_budget_counts_is_refused_naming_the_rate_that_would_count_it(ledger: Ledger) -> None:
    rules = tools("  buy: {pays: true, price: 5 eurc}\n")
    denial = denial_of(await decide(ledger, rules, "buy"))
    assert (denial.rule, denial.kind, denial.price) == ("budgets", "budget", Amount(5_000_000, "eurc"))
    assert denial.reason == (
        "no budget counts payments in eurc: the budgets covering it count sat, usd, and no rate converts eurc to"
        " usd; write one in the policy, such as `rates: {eurc: <what one eurc is worth> usd}`, or add a budget in eurc"
    )


async def test_a_paying_tool_no_budget_covers_is_refused(ledger: Ledger) -> None:
    rules = tools("  buy: {pays: true, price: 5 sat}\n", "version: 1\ndefault: allow\n")
    denial = denial_of(await decide(ledger, rules, "buy"))
    assert denial.reason == "no budget covers payments in sat: paying tools need one"


USD_ONLY = "version: 1\ndefault: allow\nbudgets:\n  - {name: dollars, limit: 5 usd}\n"
DOLLARS = Budget("dollars", Amount(5_000_000, "usd_micro"), "session:s1", Window.parse("session"))


async def test_a_usd_budget_counts_usdc_with_no_rate_written(ledger: Ledger) -> None:
    adapter = StubAdapter(Prepared(pays=True, price=Amount(10_000, "usdc")))
    money = bound_of(await decide(ledger, tools("  buy: {pays: true}\n", USD_ONLY), "buy", {}, adapter))
    assert (money.price, money.budgets) == (Amount(10_000, "usdc"), (DOLLARS,))


async def test_sats_count_in_a_usd_budget_only_once_a_rate_is_written(ledger: Ledger) -> None:
    """Never guessed: without `rates: {sat: ...}` a usd budget does not count sats, and the call is refused."""
    rule = "  buy: {pays: true, max_price: 0.05 usd}\n"
    invoice_of_21_sat = StubAdapter(Prepared(pays=True, price=Amount(21, "sat")))
    refused = denial_of(await decide(ledger, tools(rule, USD_ONLY), "buy", {}, invoice_of_21_sat))
    assert (refused.rule, refused.price) == ("tools.buy.max_price", Amount(21, "sat"))
    rated = USD_ONLY + "rates: {sat: 0.00095 usd}\n"
    money = bound_of(await decide(ledger, tools(rule, rated), "buy", {}, invoice_of_21_sat))
    assert (money.price, money.budgets) == (Amount(21, "sat"), (DOLLARS,))


async def test_a_price_over_a_cap_in_another_currency_is_refused_through_the_rate(ledger: Ledger) -> None:
    rated = USD_ONLY + "rates: {sat: 0.001 usd}\n"
    over = StubAdapter(Prepared(pays=True, price=Amount(51, "sat")))  # $0.051
    rule = "  buy: {pays: true, max_price: 0.05 usd}\n"
    denial = denial_of(await decide(ledger, tools(rule, rated), "buy", {}, over))
    assert denial.reason == "the price 51 sat is over the per-call cap of 0.05 usd"


async def test_caps_in_two_currencies_compare_through_the_rates(ledger: Ledger) -> None:
    rated = USD_ONLY + "rates: {sat: 0.001 usd}\n"
    rules = tools("  '*': {pays: true, max_price: 0.03 usd}\n  buy: {pays: true, max_price: 40 sat}\n", rated)
    money = bound_of(await decide(ledger, rules, "buy"))  # 0.03 usd is 30 sat: the stricter cap bounds it
    assert (money.price, money.priced_by) == (Amount(30_000, "usd_micro"), "max_price")


async def test_a_bound_carries_what_the_reserve_needs(ledger: Ledger) -> None:
    seven = Amount(7, "sat")
    prepared = Prepared(pays=True, price=seven, payment_id="ab" * 32, depends_on=("wallet:x", "wallet:y"))
    rules = tools("  buy: {pays: true}\n")
    money = bound_of(await decide(ledger, rules, "buy", {}, StubAdapter(prepared)))
    assert (money.payment_id, money.balance_key, money.resource) == ("ab" * 32, "wallet:x", None)
    paid_for = StubAdapter(Prepared(pays=True, price=seven, resource=URL + "?api_key=k#part"))
    assert bound_of(await decide(ledger, rules, "buy", {}, paid_for)).resource == URL  # as reports show it
