"""The balances a paying call draws on (`guard.payments.balances`): fresh and sufficient pays; stale,
dead or short refuses, naming the balance; under `on_stale: refresh` guard asks the upstream first; and
the scheduled refresh of every balance that is due."""

from __future__ import annotations

from datetime import timedelta

import pytest

from guard.errors import UpstreamError
from guard.payments.adapters._facts import Prepared, Refresh
from guard.payments.adapters.alby import Alby
from guard.payments.adapters.p402 import P402
from guard.payments.decision import Bound
from guard.payments.payments import Payments
from guard.policy.rules import Denial, Policy
from ledgers import Amount, BalanceObservation, Ledger
from tests.conftest import FakeClock
from tests.payments.doubles import WHO, FakeLink, StubAdapter, call, policy, text_result

pytestmark = pytest.mark.anyio

WALLET = "wallet:alby"
SESSION = "sess_0123456789abcdef01234567"


def alby_policy(on_stale: str = "deny", stale_after: str = "1m") -> Policy:
    return policy(
        f"""\
        version: 1
        balances: {{stale_after: {stale_after}, on_stale: {on_stale}, refresh_every: null}}
        budgets: [{{name: wallet, limit: 1000 sat}}]
        tools:
          fetch_l402: {{pays: true, max_price: 500 sat}}
        """
    )


async def fetch(ledger: Ledger, rules: Policy, link: FakeLink | None = None) -> Bound | Denial:
    """An Alby `fetch_l402`: priced by max_price (500 sat), drawing on the wallet."""
    return await Payments(ledger, [Alby()]).bound(rules, call("fetch_l402", {"url": "https://x.example"}), WHO, link)


def wallet(sats: int, **fields: object) -> BalanceObservation:
    return BalanceObservation("get_balance", WALLET, Amount(sats, "sat"), money=True, **fields)  # type: ignore[arg-type]


async def test_a_fresh_balance_that_covers_the_price_lets_the_call_pay(ledger: Ledger) -> None:
    ledger.observe(wallet(600))
    money = await fetch(ledger, alby_policy())
    assert isinstance(money, Bound) and (money.price, money.balance_key) == (Amount(500, "sat"), WALLET)


async def test_a_balance_never_seen_leaves_it_to_the_budgets(ledger: Ledger) -> None:
    assert isinstance(await fetch(ledger, alby_policy()), Bound)


async def test_a_stale_balance_refuses_the_call_under_on_stale_deny(ledger: Ledger, clock: FakeClock) -> None:
    ledger.observe(wallet(100_000))
    clock.advance(timedelta(hours=2).total_seconds())
    link = FakeLink({"get_balance": text_result({"amount_in_sats": 77_777})})
    denial = await fetch(ledger, alby_policy("deny"), link)
    assert isinstance(denial, Denial)
    assert (denial.rule, denial.kind, denial.balance_key) == ("balances.stale_after", "stale_balance", WALLET)
    assert denial.reason == (
        "the balance wallet:alby was seen 2h ago and is stale (older than 60s); the guard will not pay on it"
    )
    assert link.calls == []


async def test_a_balance_the_upstream_marks_stale_is_stale_whatever_its_age(ledger: Ledger) -> None:
    ledger.observe(wallet(100_000, upstream_stale=True))
    denial = await fetch(ledger, alby_policy("deny"))
    assert isinstance(denial, Denial)
    assert denial.reason.endswith("is stale (the upstream marks it stale); the guard will not pay on it")


async def test_under_on_stale_refresh_guard_asks_the_upstream_and_decides_on_its_answer(
    ledger: Ledger, clock: FakeClock
) -> None:
    ledger.observe(wallet(100_000))
    clock.advance(7200)
    link = FakeLink({"get_balance": text_result({"amount_in_sats": 77_777})})
    money = await fetch(ledger, alby_policy("refresh"), link)
    assert isinstance(money, Bound)
    assert link.calls == [("get_balance", {})]
    found = ledger.latest(WALLET)
    assert found is not None and (found[0].amount, found[1]) == (Amount(77_777, "sat"), 0)


async def test_a_refreshed_balance_below_the_price_refuses_the_call(ledger: Ledger) -> None:
    link = FakeLink({"get_balance": text_result({"amount_in_sats": 499})})
    denial = await fetch(ledger, alby_policy("refresh"), link)  # never seen: refreshed first
    assert isinstance(denial, Denial)
    assert (denial.rule, denial.kind, denial.balance_key) == ("balances", "balance", WALLET)
    assert denial.reason == "the balance wallet:alby has 499 sat left, and this call may cost 500 sat"
    assert (denial.remaining, denial.unit) == (499, "sat")


async def test_a_refresh_that_fails_leaves_the_stale_balance_to_refuse_the_call(
    ledger: Ledger, clock: FakeClock
) -> None:
    ledger.observe(wallet(100_000))
    clock.advance(120)
    link = FakeLink({"get_balance": UpstreamError(-32603, "wallet unreachable")})
    denial = await fetch(ledger, alby_policy("refresh"), link)
    assert isinstance(denial, Denial) and denial.kind == "stale_balance"
    assert "was seen 2m ago and is stale (older than 60s)" in denial.reason


@pytest.mark.parametrize("status", ["exhausted", "expired", "ended", "revoked", "not-found"])
async def test_a_dead_balance_refuses_the_call(ledger: Ledger, status: str) -> None:
    key = f"p402:{SESSION}"
    ledger.observe(BalanceObservation("p402", key, Amount(10**6, "usd_micro"), status=status, money=True))
    rules = policy(
        """\
        version: 1
        budgets: [{name: llm, limit: 2 usd}]
        tools: {p402_chat: {pays: true, max_price: 0.50 usd}}
        """
    )
    denial = await Payments(ledger, [P402()]).bound(rules, call("p402_chat", {"session_id": SESSION}), WHO, None)
    assert isinstance(denial, Denial)
    assert (denial.rule, denial.reason, denial.kind, denial.balance_key) == (
        "balances",
        f"the balance {key} is {status}",
        "balance",
        key,
    )


async def test_a_balance_in_a_unit_the_price_does_not_compare_with_never_refuses(ledger: Ledger) -> None:
    credits = "credits:https://api.example"
    ledger.observe(BalanceObservation("l402-balance", credits, Amount(0, credits)))
    adapter = StubAdapter(Prepared(pays=True, price=Amount(5, "sat"), depends_on=(credits,)))
    rules = policy("version: 1\nbudgets: [{name: b, limit: 100 sat}]\ntools: {buy: {pays: true}}\n")
    assert isinstance(await Payments(ledger, [adapter]).bound(rules, call("buy"), WHO, None), Bound)


# --- the scheduled refresh ---------------------------------------------------------------------------------


def due_policy(every: str | None = "2m") -> Policy:
    refresh_every = "null" if every is None else every
    return policy(f"version: 1\nbalances: {{refresh_every: {refresh_every}}}\n")


async def test_every_balance_older_than_refresh_every_is_asked_again_through_a_live_link(
    ledger: Ledger, clock: FakeClock
) -> None:
    ledger.observe(wallet(1000))
    ledger.observe(BalanceObservation("seed", "tokens:t1", Amount(5, "tokens")))  # no adapter refreshes it
    clock.advance(180)
    ledger.observe(BalanceObservation("p402", f"p402:{SESSION}", Amount(1, "usd_micro"), money=True))  # fresh
    link = FakeLink({"get_balance": text_result({"amount_in_sats": 900})})
    payments = Payments(ledger, [Alby(), P402()])

    assert await payments.refresh_due(due_policy(), lambda: [link]) == 1
    assert link.calls == [("get_balance", {})]
    found = ledger.latest(WALLET)
    assert found is not None and found[0].amount == Amount(900, "sat")


async def test_no_balance_is_refreshed_without_refresh_every_or_a_live_link(ledger: Ledger, clock: FakeClock) -> None:
    ledger.observe(wallet(1000))
    clock.advance(3600)
    link = FakeLink({"get_balance": text_result({"amount_in_sats": 900})})
    payments = Payments(ledger, [Alby()])
    assert await payments.refresh_due(due_policy(None), lambda: [link]) == 0
    assert await payments.refresh_due(due_policy(), lambda: []) == 0
    assert link.calls == []


async def test_a_refresh_the_upstream_does_not_answer_is_not_counted(ledger: Ledger, clock: FakeClock) -> None:
    ledger.observe(wallet(1000))
    clock.advance(3600)
    refreshes = {WALLET: Refresh("get_balance", {})}
    adapter = StubAdapter(refreshes=refreshes)
    link = FakeLink({"get_balance": UpstreamError(-32603, "wallet unreachable")})
    assert await Payments(ledger, [adapter]).refresh_due(due_policy(), lambda: [link]) == 0
