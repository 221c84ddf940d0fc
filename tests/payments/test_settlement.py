"""What the answer does to a forwarded call's hold (`Payments.settle`, `Payments.unanswered`): paid
settles at what was paid (above the reservation too: whole, and flagged), not paid voids, unknown and
unreadable keep it in doubt; no answer voids only when the tool did not run. And what an answer reveals
is stored: observations, quotes keyed by the URL's public form, the payment it names."""

from __future__ import annotations

from typing import Any

import pytest

from guard.payments.adapters._facts import Outcome, Prepared, Quote
from guard.payments.decision import Bound
from guard.payments.payments import Payments
from guard.payments.reading import Reading
from guard.payments.settlement import Settled
from ledgers import Amount, BalanceObservation, Budget, Ledger, PaymentInFlight
from tests.payments.doubles import WHO, StubAdapter, call, policy, text_result

pytestmark = pytest.mark.anyio

RESERVED = Amount(50, "sat")
BUDGET = Budget("per-session", Amount(1000, "sat"), "session:s1")
RULES = policy("version: 1\nbudgets: [{name: per-session, limit: 1000 sat}]\ntools: {buy: {pays: true}}\n")
HASH = "ab" * 32


def forwarded(ledger: Ledger, *, payment_id: str | None = None) -> int:
    """A hold of 50 sat, reserved and marked forwarded, as the gate leaves it before the answer."""
    hold = ledger.reserve([BUDGET], RESERVED, idempotency_key=payment_id, session="s1", tool="buy")
    ledger.mark_forwarded(hold)
    return hold


async def settle(ledger: Ledger, adapter: StubAdapter | None, hold: int | None, result: Any = None) -> Settled:
    reading = Reading(adapter, adapter.prepared) if adapter is not None else Reading(None, None)
    money = Bound(reading, RESERVED if hold is not None else None, "max_price")
    payments = Payments(ledger, [adapter] if adapter is not None else [])
    return await payments.settle(RULES, call("buy"), WHO, money, text_result({}) if result is None else result, hold)


async def test_a_paid_answer_settles_the_hold_at_what_it_says_was_paid(ledger: Ledger) -> None:
    hold = forwarded(ledger)
    settled = await settle(ledger, StubAdapter(answer=Outcome("paid", spent=Amount(30, "sat"))), hold)
    assert settled == Settled(Amount(30, "sat"), "settled")
    info = ledger.hold(hold)
    assert (info.phase, info.settled) == ("settled", Amount(30, "sat"))
    assert ledger.usage(BUDGET).spent == 30


async def test_a_paid_answer_that_names_no_amount_settles_at_the_reservation(ledger: Ledger) -> None:
    hold = forwarded(ledger)
    settled = await settle(ledger, StubAdapter(answer=Outcome("paid", problem="amount not reported")), hold)
    assert settled == Settled(RESERVED, "settled", "amount not reported")
    assert ledger.hold(hold).settled == RESERVED


async def test_a_payment_above_its_reservation_is_counted_whole_and_flagged(ledger: Ledger) -> None:
    hold = forwarded(ledger)
    answer = Outcome("paid", spent=Amount(70, "sat"), problem="satsPaid is a string")
    settled = await settle(ledger, StubAdapter(answer=answer), hold)
    assert settled.spent == Amount(70, "sat")
    assert settled.problem == (
        "over reservation: the upstream paid 70 sat, 20 sat more than the 50 sat reserved; satsPaid is a string"
    )
    info = ledger.hold(hold)
    assert (info.settled, info.over_reservation) == (Amount(70, "sat"), Amount(20, "sat"))
    assert ledger.usage(BUDGET).spent == 70


@pytest.mark.parametrize("state", ["not_paid", "no_payment"])
async def test_an_answer_that_proves_nothing_was_paid_voids_the_hold(ledger: Ledger, state: Any) -> None:
    hold = forwarded(ledger)
    assert await settle(ledger, StubAdapter(answer=Outcome(state)), hold) == Settled(None, "voided")
    assert ledger.hold(hold).phase == "voided"
    assert ledger.usage(BUDGET).held == 0


async def test_an_unknown_outcome_keeps_the_hold_in_doubt_and_counted(ledger: Ledger) -> None:
    hold = forwarded(ledger)
    answer = Outcome("unknown", problem="paymentState is unknown")
    assert await settle(ledger, StubAdapter(answer=answer), hold) == Settled(
        None, "in_doubt", "paymentState is unknown"
    )
    assert ledger.hold(hold).phase == "in_doubt"
    assert ledger.usage(BUDGET).held == 50


@pytest.mark.parametrize(
    ("adapter", "result", "problem"),
    [
        (
            StubAdapter(answer=RuntimeError("adapter bug")),
            text_result({}),
            "the guard could not read the upstream's answer",
        ),
        (StubAdapter(), ["not", "an", "object"], "the upstream's result is not an object"),
    ],
    ids=["the adapter fails", "the result is not an object"],
)
async def test_an_answer_that_cannot_be_read_keeps_the_hold_in_doubt(
    ledger: Ledger, adapter: StubAdapter, result: Any, problem: str
) -> None:
    hold = forwarded(ledger)
    assert await settle(ledger, adapter, hold, result) == Settled(None, "in_doubt", problem)
    assert ledger.hold(hold).phase == "in_doubt"


async def test_a_call_no_adapter_reads_settles_at_its_policy_price(ledger: Ledger) -> None:
    hold = forwarded(ledger)
    assert await settle(ledger, None, hold) == Settled(RESERVED, "settled")


async def test_the_payment_an_answer_names_is_given_to_the_hold_so_it_cannot_be_paid_twice(ledger: Ledger) -> None:
    hold = forwarded(ledger)
    await settle(ledger, StubAdapter(answer=Outcome("unknown", payment_id=HASH)), hold)
    assert ledger.hold(hold).idempotency_key == HASH
    with pytest.raises(PaymentInFlight):
        ledger.reserve([BUDGET], RESERVED, idempotency_key=HASH)


async def test_a_payment_another_hold_has_is_not_given_twice(ledger: Ledger) -> None:
    first = forwarded(ledger, payment_id=HASH)
    second = forwarded(ledger)
    await settle(ledger, StubAdapter(answer=Outcome("paid", payment_id=HASH)), second)
    assert (ledger.hold(first).idempotency_key, ledger.hold(second).idempotency_key) == (HASH, None)


async def test_what_an_answer_reveals_is_stored_for_a_call_that_held_nothing(ledger: Ledger) -> None:
    url = "https://user:pw@shop.example/item?api_key=sk_live_0123456789abcdef#top"
    observation = BalanceObservation("l402-balance", "credits:https://shop.example", Amount(3, "credits:x"))
    answer = Outcome("no_payment", observations=(observation,), quotes=(Quote(url, Amount(21, "sat")),))
    adapter = StubAdapter(Prepared(pays=False), answer=answer)
    assert await settle(ledger, adapter, None) == Settled(None, "none")
    found = ledger.latest("credits:https://shop.example")
    assert found is not None and found[0].amount == Amount(3, "credits:x")
    quote = ledger.quote("https://shop.example/item")  # keyed without credentials, query or fragment
    assert quote is not None and quote.amount == Amount(21, "sat")


# --- no answer ---------------------------------------------------------------------------------------------


async def test_no_answer_from_a_tool_that_did_not_run_voids_the_hold(ledger: Ledger) -> None:
    hold = forwarded(ledger)
    await Payments(ledger, []).unanswered(hold, "buy", not_run=True)
    assert ledger.hold(hold).phase == "voided"


async def test_no_answer_from_a_tool_that_may_have_run_keeps_the_hold_in_doubt(ledger: Ledger) -> None:
    hold = forwarded(ledger)
    await Payments(ledger, []).unanswered(hold, "buy")
    assert ledger.hold(hold).phase == "in_doubt"


async def test_no_answer_after_the_hold_was_settled_changes_nothing(ledger: Ledger) -> None:
    hold = forwarded(ledger)
    ledger.settle(hold, RESERVED)
    await Payments(ledger, []).unanswered(hold, "buy")
    assert ledger.hold(hold).phase == "settled"
