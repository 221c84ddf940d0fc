"""The operators' controls in the gate's checklist, in process: the kill switch (step 1, a view of the
ledger's freezes at most a second stale; the reserve re-reads them in its transaction) and the loop breaker
(`repeat_limit`, counted in the reserve's transaction, for calls that pay only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from guard.gate import gate as gate_module
from ledgers import Amount, Budget, Ledger
from tests.conftest import FakeClock
from tests.gate.test_gate import SHOP, Shop
from tests.payments.doubles import RecordingLedger, policy

pytestmark = pytest.mark.anyio

LOOPING = """\
version: 1
budgets: [{name: per-session, limit: 1000 sat}]
tools:
  buy: {pays: true, price_from: amount, price_unit: sat, repeat_limit: 3/10m}
  browse: {}
"""


@pytest.fixture
def shop(ledger: RecordingLedger) -> Shop:
    return Shop(ledger, policy(SHOP))


@pytest.fixture
def looping(ledger: RecordingLedger) -> Shop:
    return Shop(ledger, policy(LOOPING))


# --- the kill switch -----------------------------------------------------------------------------------------


async def test_a_freeze_of_paying_calls_refuses_a_paying_tool_naming_the_reason_and_who_and_lets_free_calls_by(
    shop: Shop,
) -> None:
    shop.ledger.freeze("identity:alice", reason="agent in a loop", by="ops-bob")
    denied = shop.denied(await shop.call("buy", item="tea", amount=5))
    assert denied["rule"] == "freeze.identity:alice"
    assert denied["reason"] == (
        "paying calls frozen for identity alice by ops-bob: agent in a loop (until `guard unfreeze --identity alice`)"
    )
    assert (shop.last.decision, shop.last.kind, shop.last.price) == ("deny", "freeze", None)  # before any price
    assert (await shop.call("browse"))["isError"] is False
    assert shop.upstream.sent == [None]  # only the free call went out
    assert shop.ledger.open_holds() == []


async def test_an_all_tools_freeze_refuses_free_calls_too(shop: Shop) -> None:
    shop.ledger.freeze("global", reason="incident", by="ops", all_tools=True)
    denied = shop.denied(await shop.call("browse"))
    assert (denied["rule"], shop.last.kind) == ("freeze.global", "freeze")
    assert shop.upstream.sent == []


async def test_a_freeze_of_another_identity_or_session_leaves_the_caller_alone(shop: Shop) -> None:
    shop.ledger.freeze("identity:mallory", reason="r", by="ops", all_tools=True)
    shop.ledger.freeze("session:s2", reason="r", by="ops", all_tools=True)
    assert (await shop.call("buy", item="tea", amount=5))["isError"] is False
    assert shop.denied(await shop.call("browse", session="s2"))["rule"] == "freeze.session:s2"


async def test_a_freeze_the_gate_has_not_read_yet_is_still_refused_by_the_reserve(
    shop: Shop, tmp_path: Path, clock: FakeClock
) -> None:
    """Step 1's view is up to a second old; the reservation reads the freezes in its own transaction, so a
    paying call never slips through that second."""
    assert (await shop.call("browse"))["isError"] is False  # the gate has read: nothing frozen
    with Ledger.open(tmp_path / "ledger.db", clock=clock) as other_guard:
        other_guard.freeze("global", reason="stop paying", by="ops")
    denied = shop.denied(await shop.call("buy", item="tea", amount=5))
    assert (denied["rule"], shop.last.kind) == ("freeze.global", "freeze")
    assert shop.last.price == Amount(5, "sat")  # refused at the reserve, after pricing
    assert shop.upstream.sent == [None]


async def test_the_gate_reads_the_freezes_at_most_once_a_second_and_sees_a_new_one_after(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[int] = []
    read = shop.ledger.freezes
    monkeypatch.setattr(shop.ledger, "freezes", lambda: reads.append(1) or read())
    monkeypatch.setattr(gate_module, "FREEZE_STALENESS_S", 3600.0)  # a slow machine's calls stay within it
    for n in range(5):
        assert (await shop.call("browse", session=f"s{n}"))["isError"] is False
    assert len(reads) == 1
    shop.ledger.freeze("global", reason="r", by="ops", all_tools=True)
    assert (await shop.call("browse", session="s5"))["isError"] is False  # not read yet: the view is stale
    monkeypatch.setattr(gate_module, "FREEZE_STALENESS_S", 0.0)  # the second has passed
    assert shop.denied(await shop.call("browse", session="s6"))["rule"] == "freeze.global"
    assert len(reads) == 2


async def test_after_unfreezing_paying_calls_go_through_again(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gate_module, "FREEZE_STALENESS_S", 0.0)
    shop.ledger.freeze("session:s1", reason="r", by="ops")
    assert shop.denied(await shop.call("buy", item="tea", amount=5))["rule"] == "freeze.session:s1"
    shop.ledger.unfreeze("session:s1", by="ops")
    assert (await shop.call("buy", item="tea", amount=5))["isError"] is False


# --- the loop breaker ----------------------------------------------------------------------------------------


async def test_the_fourth_identical_purchase_in_a_session_is_refused_with_its_rule_and_when_to_retry(
    looping: Shop,
) -> None:
    for _ in range(3):
        assert (await looping.call("buy", item="tea", amount=5))["isError"] is False
    denied = looping.denied(await looping.call("buy", item="tea", amount=5))
    assert (denied["rule"], looping.last.kind) == ("tools.buy.repeat_limit", "repeat_limit")
    assert denied["reason"] == "repeat limit reached: the same purchase at most 3 times per 10m (per session)"
    assert 0 < denied["retry_after_s"] <= 600
    assert looping.last.price == Amount(5, "sat")
    assert len(looping.upstream.sent) == 3
    per_session = Budget("per-session", Amount(1000, "sat"), "session:s1")
    assert looping.ledger.usage(per_session).spent == 15  # the refused one reserved nothing


async def test_another_purchase_or_another_session_is_not_counted_with_it(looping: Shop) -> None:
    for _ in range(3):
        await looping.call("buy", item="tea", amount=5)
    assert (await looping.call("buy", item="jam", amount=5))["isError"] is False
    assert (await looping.call("buy", session="s2", item="tea", amount=5))["isError"] is False


async def test_the_window_slides_a_purchase_is_allowed_again_once_the_oldest_is_past_it(
    looping: Shop, clock: FakeClock
) -> None:
    for _ in range(3):
        await looping.call("buy", item="tea", amount=5)
    clock.advance(601)
    assert (await looping.call("buy", item="tea", amount=5))["isError"] is False


async def test_a_purchase_refused_by_its_budget_is_not_counted_as_bought(ledger: RecordingLedger) -> None:
    shop = Shop(ledger, policy(LOOPING.replace("1000 sat", "10 sat")))
    for _ in range(5):
        assert shop.denied(await shop.call("buy", item="tea", amount=50))["rule"] == "budgets.per-session"
    assert (await shop.call("buy", item="tea", amount=5))["isError"] is False
