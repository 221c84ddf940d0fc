"""Prices remembered by payment hash: an answer naming a price for a payment hash (a discover, a preview, a
402) stores a quote under that hash too, and a call that pays that hash (402-mcp's `l402-pay {paymentHash}`)
is bound by it, priced by "quote"; with none, by max_price. The quote is the ledger's: kept across a
restart, shared by guards on one ledger, expiring with the invoice. Real ledgers, in process."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from guard.payments.adapters._facts import Prepared
from guard.payments.adapters.l402_mcp import L402Mcp
from guard.payments.decision import Bound
from guard.payments.learning import payment_key
from guard.payments.payments import Payments
from guard.policy.rules import Denial, Policy
from ledgers import Amount, Ledger
from tests.captures.files import capture
from tests.conftest import FakeClock
from tests.payments.doubles import WHO, StubAdapter, call, policy, text_result

pytestmark = pytest.mark.anyio

JSON = dict[str, Any]
URL = "https://shop.example/item"
HASH = "fe013bf62836b6661da1bf6dd03e71cc2884de7754d7c5baa78e05f250d97fff"
RULES = policy(
    "version: 1\ndefault: deny\nbudgets: [{name: daily, limit: 100000 sat}]\n"
    "tools:\n  l402-pay: {pays: true, max_price: 1000 sat}\n  l402-discover: {}\n"
    "  buy: {pays: true, max_price: 1000 sat}\n"
    "  l402-fetch: {pays: true, max_price: 1000 sat}\n"
)


async def bound(ledger: Ledger, name: str, arguments: JSON, *adapters: Any, rules: Policy = RULES) -> Bound:
    decision = await Payments(ledger, list(adapters) or [L402Mcp()]).bound(rules, call(name, arguments), WHO, None)
    assert isinstance(decision, Bound), decision
    return decision


async def learn(ledger: Ledger, name: str, arguments: JSON, result: JSON) -> None:
    """Read an answer as the gate does (nothing held: only what it reveals is learnt)."""
    money = await bound(ledger, name, arguments)
    await Payments(ledger, [L402Mcp()]).settle(RULES, call(name, arguments), WHO, money, result, None)


def discover(payment_hash: str, sats: int) -> JSON:
    return text_result({"url": URL, "costSats": sats, "paymentHash": payment_hash})


async def test_a_price_named_for_a_payment_hash_bounds_the_l402_pay_of_that_hash(ledger: Ledger) -> None:
    await learn(ledger, "l402-discover", {"url": URL}, discover(HASH, 21))
    money = await bound(ledger, "l402-pay", {"paymentHash": HASH})
    assert (money.price, money.priced_by, money.payment_id) == (Amount(21, "sat"), "quote", HASH)
    by_hash, by_url = ledger.quote(payment_key(HASH)), ledger.quote(URL)
    assert by_hash is not None and by_url is not None  # both kept: a fetch of the URL is priced by its own
    assert (by_hash.amount, by_hash.payment_id, by_url.amount) == (Amount(21, "sat"), HASH, Amount(21, "sat"))


async def test_a_hash_written_in_capitals_finds_the_same_quote(ledger: Ledger) -> None:
    await learn(ledger, "l402-discover", {"url": URL}, discover(HASH, 21))
    money = await bound(ledger, "l402-pay", {"paymentHash": HASH.upper()})
    assert (money.price, money.priced_by) == (Amount(21, "sat"), "quote")


async def test_an_l402_pay_of_a_hash_no_answer_priced_is_bounded_by_max_price_and_flagged_so(ledger: Ledger) -> None:
    await learn(ledger, "l402-discover", {"url": URL}, discover(HASH, 21))
    other = "ab" * 32
    money = await bound(ledger, "l402-pay", {"paymentHash": other})
    assert (money.price, money.priced_by, money.payment_id) == (Amount(1000, "sat"), "max_price", other)


async def test_with_no_quote_and_no_max_price_an_l402_pay_by_hash_is_refused(ledger: Ledger) -> None:
    rules = policy(
        "version: 1\ndefault: deny\nbudgets: [{name: daily, limit: 100000 sat}]\ntools: {l402-pay: {pays: true}}\n"
    )
    decision = await Payments(ledger, [L402Mcp()]).bound(rules, call("l402-pay", {"paymentHash": HASH}), WHO, None)
    assert isinstance(decision, Denial) and (decision.kind, decision.rule) == ("price", "tools.l402-pay")


async def test_the_quote_of_the_payment_wins_over_the_quote_of_the_resource(ledger: Ledger) -> None:
    """A call naming both: the hash's price is the very invoice that will be paid; the URL's, its next one."""
    ledger.remember_quote(URL, Amount(30, "sat"))
    ledger.remember_quote(payment_key(HASH), Amount(21, "sat"))
    both = StubAdapter(Prepared(pays=True, payment_id=HASH, quote_for=URL))
    money = await bound(ledger, "buy", {}, both)
    assert (money.price, money.priced_by) == (Amount(21, "sat"), "quote")
    url_only = StubAdapter(Prepared(pays=True, payment_id="cd" * 32, quote_for=URL))
    assert (await bound(ledger, "buy", {}, url_only)).price == Amount(30, "sat")


async def test_a_quote_by_hash_expires_with_its_invoice(tmp_path: Path) -> None:
    """The discover of capture paywall-human-03: an invoice made at 06:51:21, expiring an hour later."""
    recorded = capture("paywall-human-03-l402-discover")
    clock = FakeClock(datetime(2026, 11, 21, 6, 52, tzinfo=UTC))
    payment = {"paymentHash": "218b1e78a963ab624d2efd757e3297fb2694c5541a476eab5bb2f4b76d2120ff"}
    with Ledger.open(tmp_path / "ledger.db", clock=clock) as ledger:
        await learn(ledger, "l402-discover", recorded["request"]["params"]["arguments"], recorded["response"]["result"])
        money = await bound(ledger, "l402-pay", payment)
        assert (money.price, money.priced_by) == (Amount(21_000, "msat"), "quote")  # the invoice's exact amount
        clock.advance(59 * 60 + 20)  # 07:51:20
        assert (await bound(ledger, "l402-pay", payment)).priced_by == "quote"
        clock.advance(1)  # 07:51:21: expired
        assert (await bound(ledger, "l402-pay", payment)).priced_by == "max_price"


async def test_of_two_prices_named_for_one_hash_the_higher_is_kept(ledger: Ledger) -> None:
    await learn(ledger, "l402-discover", {"url": URL}, discover(HASH, 21))
    await learn(ledger, "l402-discover", {"url": URL}, discover(HASH, 5))
    assert (await bound(ledger, "l402-pay", {"paymentHash": HASH})).price == Amount(21, "sat")
    await learn(ledger, "l402-discover", {"url": URL}, discover(HASH, 40))
    assert (await bound(ledger, "l402-pay", {"paymentHash": HASH})).price == Amount(40, "sat")
    quote = ledger.quote(URL)
    assert quote is not None and quote.amount == Amount(40, "sat")  # a URL's quote: the latest wins


async def test_a_402_from_a_human_wallet_prices_its_hash_by_cost_sats(ledger: Ledger) -> None:
    """Capture paywall-human-07: no invoice in the answer, only costSats and the hash."""
    recorded = capture("paywall-human-07-l402-fetch-autopay-human")
    arguments = recorded["request"]["params"]["arguments"]
    await learn(ledger, "l402-fetch", arguments, recorded["response"]["result"])
    money = await bound(ledger, "l402-pay", {"paymentHash": HASH})
    assert (money.price, money.priced_by) == (Amount(21, "sat"), "quote")


async def test_a_quote_by_hash_outlives_a_restart_and_is_shared_by_guards_on_one_ledger(ledger_url: str) -> None:
    with Ledger.open(ledger_url) as first:
        await learn(first, "l402-discover", {"url": URL}, discover(HASH, 21))
    with Ledger.open(ledger_url) as restarted, Ledger.open(ledger_url) as second:
        for ledger in (restarted, second):
            money = await bound(ledger, "l402-pay", {"paymentHash": HASH})
            assert (money.price, money.priced_by) == (Amount(21, "sat"), "quote")
