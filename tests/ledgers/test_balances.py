"""Spend seen in balances: what the guard's payments took from a balance, spend recorded after the fact,
and finding the hold of a payment (on SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ledgers import Amount, Budget, BudgetExceeded, Ledger
from tests.ledgers.conftest import FakeClock

KEY = "p402:sess_0123456789abcdef01234567"
BUDGET = Budget("daily", Amount(1_000_000, "usd_micro"))


@pytest.fixture
def ledger(ledger_url: str, clock: FakeClock) -> Iterator[Ledger]:
    with Ledger.open(ledger_url, clock=clock) as opened:
        yield opened


def pay(
    ledger: Ledger, value: int, *, key: str | None = KEY, outcome: str = "settled", payment: str | None = None
) -> int:
    hold = ledger.reserve([BUDGET], Amount(value, "usd_micro"), idempotency_key=payment, balance_key=key)
    ledger.mark_forwarded(hold)
    if outcome == "settled":
        ledger.settle(hold, Amount(value // 2, "usd_micro"))
    elif outcome == "in_doubt":
        ledger.mark_in_doubt(hold)
    else:
        ledger.void(hold)
    return hold


def test_spent_from_a_balance_counts_settled_and_in_doubt_payments_since_a_moment(
    ledger: Ledger, clock: FakeClock
) -> None:
    pay(ledger, 100)  # before the moment: not counted
    clock.advance(10)
    since = clock.now()
    clock.advance(1)
    pay(ledger, 200)  # settled at 100
    pay(ledger, 300, outcome="in_doubt")  # counted in full: it may have left
    pay(ledger, 400, outcome="void")  # nothing left
    pay(ledger, 500, key="wallet:alby")  # another balance
    pay(ledger, 600, key=None)

    assert ledger.spent_from(KEY, since) == [Amount(400, "usd_micro")]
    assert ledger.spent_from("wallet:none", since) == []


def test_a_charge_records_spend_that_already_happened_even_past_the_limit(ledger: Ledger) -> None:
    pay(ledger, 1_000_000)  # settled at 500 000 of 1 000 000
    hold = ledger.charge([BUDGET], Amount(650_000, "usd_micro"), balance_key=KEY, tool="p402_get_session")

    assert ledger.hold(hold).phase == "settled" and ledger.hold(hold).settled == Amount(650_000, "usd_micro")
    assert ledger.usage(BUDGET).spent == 1_150_000
    assert ledger.usage(BUDGET).remaining == 0
    with pytest.raises(BudgetExceeded):
        ledger.reserve([BUDGET], Amount(1, "usd_micro"))


def test_the_hold_of_a_payment_is_found_unless_it_was_voided(ledger: Ledger) -> None:
    doubtful = pay(ledger, 10, outcome="in_doubt", payment="a" * 64)
    pay(ledger, 10, outcome="void", payment="b" * 64)

    found = ledger.hold_for_payment("a" * 64)
    assert found is not None and (found.id, found.phase) == (doubtful, "in_doubt")
    assert ledger.hold_for_payment("b" * 64) is None
    assert ledger.hold_for_payment("c" * 64) is None
