"""Shadow mode in the gate's checklist, in process: a denial the policy shadows (`mode: shadow`, or `shadow:
true` on a tool rule or a budget) does not stop the call; it is forwarded, and its event is a `would_deny`
naming the first rule that would have denied it. The money still moves through the ledger (reserved and
settled, over a shadowed budget if need be). Freezes and "no price, no pay" are never shadowed."""

from __future__ import annotations

import logging

import pytest

from ledgers import Amount, Budget
from tests.gate.test_gate import SHOP, Shop
from tests.payments.doubles import RecordingLedger, policy

pytestmark = pytest.mark.anyio

SHADOW_SHOP = SHOP.replace("default: deny\n", "default: deny\nmode: shadow\n")

SHADOWED_BUDGET = """\
version: 1
budgets:
  - {name: per-session, limit: 10 sat, shadow: true}
  - {name: daily, limit: 1000 sat, window: day, scope: global}
tools:
  buy: {pays: true, price_from: amount, price_unit: sat, repeat_limit: 1/10m}
  unpriced: {pays: true}
"""


@pytest.fixture
def shadow(ledger: RecordingLedger) -> Shop:
    return Shop(ledger, policy(SHADOW_SHOP))


@pytest.fixture
def budget_shadowed(ledger: RecordingLedger) -> Shop:
    return Shop(ledger, policy(SHADOWED_BUDGET))


async def test_in_shadow_mode_a_default_denied_tool_is_forwarded_and_recorded_as_a_would_deny(shadow: Shop) -> None:
    assert (await shadow.call("refund"))["isError"] is False
    assert shadow.upstream.sent == [None]
    last = shadow.last
    assert (last.decision, last.rule, last.kind) == ("would_deny", "default", "default")
    assert last.reason == "refund is not allowed by the policy (default: deny)"


async def test_in_shadow_mode_the_first_rule_that_would_deny_is_recorded_and_the_money_still_settles(
    shadow: Shop,
) -> None:
    """A failed condition and an amount over max_price: the condition (step 3) is named, as it would have won;
    the payment is reserved and settled at the price the call asked."""
    assert (await shadow.call("buy", item="Tea", amount=70))["isError"] is False
    last = shadow.last
    assert (last.decision, last.rule, last.kind) == ("would_deny", "tools.buy.when[0]", "condition")
    assert last.price == Amount(70, "sat")
    assert last.spent == Amount(70, "sat")
    [state] = shadow.ledger.states([Budget("per-session", Amount(100, "sat"), "session:s1")])
    assert state.spent == 70


async def test_in_shadow_mode_a_budget_is_charged_past_its_limit_and_says_which_budget_would_have_refused(
    shadow: Shop,
) -> None:
    for _ in range(2):
        assert (await shadow.call("buy", item="tea", amount=60))["isError"] is False
    last = shadow.last
    assert (last.decision, last.rule, last.kind) == ("would_deny", "budgets.per-session", "budget")
    assert last.spent == Amount(60, "sat")
    [state] = shadow.ledger.states([Budget("per-session", Amount(100, "sat"), "session:s1")])
    assert state.spent == 120 and state.remaining == 0  # real spend, over the limit
    assert shadow.upstream.sent == ["forwarded", "forwarded"]


async def test_in_shadow_mode_a_rate_limit_counts_and_the_call_over_it_is_forwarded(shadow: Shop) -> None:
    for _ in range(3):
        assert (await shadow.call("browse"))["isError"] is False
    assert (shadow.last.decision, shadow.last.rule, shadow.last.kind) == (
        "would_deny",
        "tools.browse.rate_limit",
        "rate_limit",
    )
    assert [e.decision for e in shadow.watcher.events] == ["allow", "allow", "would_deny"]


async def test_a_shadowed_budget_reserves_over_its_limit_while_an_enforced_budget_still_refuses(
    budget_shadowed: Shop,
) -> None:
    assert (await budget_shadowed.call("buy", amount=8, item="a"))["isError"] is False
    assert budget_shadowed.last.decision == "allow"
    assert (await budget_shadowed.call("buy", amount=8, item="b"))["isError"] is False
    assert (budget_shadowed.last.decision, budget_shadowed.last.rule) == ("would_deny", "budgets.per-session")
    denied = budget_shadowed.denied(await budget_shadowed.call("buy", amount=2000, item="c"))
    assert denied["rule"] == "budgets.daily"  # not shadowed: refused, nothing reserved
    assert budget_shadowed.last.decision == "deny"
    [state] = budget_shadowed.ledger.states([Budget("per-session", Amount(10, "sat"), "session:s1")])
    assert state.spent == 16


async def test_the_repeat_limit_is_enforced_when_only_a_budget_is_shadowed(budget_shadowed: Shop) -> None:
    assert (await budget_shadowed.call("buy", amount=1, item="a"))["isError"] is False
    denied = budget_shadowed.denied(await budget_shadowed.call("buy", amount=1, item="a"))
    assert denied["rule"] == "tools.buy.repeat_limit"


async def test_no_price_no_pay_refuses_even_in_shadow_mode(ledger: RecordingLedger) -> None:
    """A paying call with nothing bounding its price cannot be reserved: forwarding it would let money leave
    that the ledger never counted, so shadow mode keeps refusing it (fail closed)."""
    shop = Shop(ledger, policy(SHADOWED_BUDGET.replace("version: 1\n", "version: 1\nmode: shadow\n")))
    denied = shop.denied(await shop.call("unpriced"))
    assert (denied["rule"], shop.last.kind, shop.last.decision) == ("tools.unpriced", "price", "deny")
    assert shop.upstream.sent == []


async def test_a_freeze_refuses_even_in_shadow_mode(shadow: Shop) -> None:
    shadow.ledger.freeze("global", reason="incident", by="ops", all_tools=True)
    denied = shadow.denied(await shadow.call("browse"))
    assert (denied["rule"], shadow.last.decision, shadow.last.kind) == ("freeze.global", "deny", "freeze")
    assert shadow.upstream.sent == []


async def test_shadow_true_on_one_tool_rule_shadows_that_rule_only(ledger: RecordingLedger) -> None:
    rules = SHOP + "  refund: {action: deny, shadow: true}\n"
    shop = Shop(ledger, policy(rules))
    assert (await shop.call("refund"))["isError"] is False
    assert (shop.last.decision, shop.last.rule, shop.last.kind) == ("would_deny", "tools.refund", "tool")
    assert shop.denied(await shop.call("nothing"))["rule"] == "default"


async def test_shadowed_tools_stay_listed_so_agents_see_what_they_would_in_enforcement(shadow: Shop) -> None:
    assert shadow.source.policy.visible("refund")


async def test_the_gate_warns_at_start_when_anything_is_shadowed(
    ledger: RecordingLedger, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="guard.gate"):
        Shop(ledger, policy(SHOP))
        assert not caplog.records
        Shop(ledger, policy(SHADOWED_BUDGET))
    [warning] = caplog.records
    assert "shadow mode: budgets.per-session" in warning.getMessage()


async def test_shadow_true_on_a_paying_rule_lets_a_price_over_its_max_price_through_and_settles_it(
    ledger: RecordingLedger,
) -> None:
    rules = SHOP.replace("    max_price: 60 sat\n", "    max_price: 60 sat\n    shadow: true\n")
    shop = Shop(ledger, policy(rules))
    assert (await shop.call("buy", item="tea", amount=70))["isError"] is False
    assert (shop.last.decision, shop.last.rule, shop.last.spent) == (
        "would_deny",
        "tools.buy.max_price",
        Amount(70, "sat"),
    )
