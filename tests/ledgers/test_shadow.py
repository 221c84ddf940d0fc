"""Shadow mode in the ledger: `reserve_shadowed` writes the hold over a shadowed budget or rate limit and
returns the refusal it would have made; every other key, the idempotency key and the freezes refuse as
`reserve` does, nothing written. `hit` counts a free call over a shadowed rate limit. The report lists the
would-denials by rule with the money they would have kept. On a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import pytest

from ledgers import (
    Amount,
    Budget,
    BudgetExceeded,
    CallRecord,
    Frozen,
    Ledger,
    PaymentInFlight,
    RateLimit,
    RateLimited,
    Window,
)
from tests.ledgers.helpers import day_report

TIGHT = Budget("per-session", Amount(100, "sat"), scope="session:s1")
DAILY = Budget("daily", Amount(1000, "sat"))
TWICE = RateLimit("calls:buy/1m@session:s1", 2, Window.sliding("1m"))


def test_a_shadowed_budget_is_charged_past_its_limit_and_the_refusal_it_would_make_is_returned(ledger: Ledger) -> None:
    first = ledger.reserve_shadowed([TIGHT], Amount(80, "sat"), shadow={TIGHT.key})
    assert first.would_refuse is None
    second = ledger.reserve_shadowed([TIGHT], Amount(80, "sat"), shadow={TIGHT.key})
    assert isinstance(second.would_refuse, BudgetExceeded)
    assert (second.would_refuse.rule, second.would_refuse.remaining) == ("per-session", 20)
    ledger.settle(second.hold, Amount(80, "sat"))
    [state] = ledger.states([TIGHT])
    assert (state.spent, state.held, state.remaining) == (80, 80, 0)


def test_a_budget_not_in_shadow_still_refuses_and_nothing_is_written(ledger: Ledger) -> None:
    ledger.reserve_shadowed([TIGHT, DAILY], Amount(90, "sat"), shadow={TIGHT.key})
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve_shadowed([TIGHT, DAILY], Amount(950, "sat"), shadow={TIGHT.key})
    assert refused.value.rule == "daily"
    assert len(ledger.open_holds()) == 1


def test_the_plain_reserve_never_goes_over_a_budget(ledger: Ledger) -> None:
    ledger.reserve_shadowed([TIGHT], Amount(150, "sat"), shadow={TIGHT.key})
    with pytest.raises(BudgetExceeded):
        ledger.reserve([TIGHT], Amount(1, "sat"))


def test_a_shadowed_rate_limit_counts_the_call_over_it_and_returns_its_refusal(ledger: Ledger) -> None:
    for _ in range(2):
        assert (
            ledger.reserve_shadowed([DAILY], Amount(1, "sat"), rate_limits=[TWICE], shadow={TWICE.key}).would_refuse
            is None
        )
    third = ledger.reserve_shadowed([DAILY], Amount(1, "sat"), rate_limits=[TWICE], shadow={TWICE.key})
    assert isinstance(third.would_refuse, RateLimited)
    assert ledger.count(TWICE.key, TWICE.window) == 3
    with pytest.raises(RateLimited):
        ledger.reserve([DAILY], Amount(1, "sat"), rate_limits=[TWICE])


def test_a_free_call_over_a_shadowed_rate_limit_is_counted_and_its_refusal_returned(ledger: Ledger) -> None:
    assert ledger.hit([TWICE], shadow={TWICE.key}) is None
    assert ledger.hit([TWICE], shadow={TWICE.key}) is None
    assert isinstance(ledger.hit([TWICE], shadow={TWICE.key}), RateLimited)
    assert ledger.count(TWICE.key, TWICE.window) == 3
    with pytest.raises(RateLimited):
        ledger.hit([TWICE])


def test_freezes_and_open_payments_are_never_shadowed(ledger: Ledger) -> None:
    ledger.reserve_shadowed([TIGHT], Amount(1, "sat"), shadow={TIGHT.key}, idempotency_key="hash-1")
    with pytest.raises(PaymentInFlight):
        ledger.reserve_shadowed([TIGHT], Amount(1, "sat"), shadow={TIGHT.key}, idempotency_key="hash-1")
    ledger.freeze("global", reason="incident", by="ops")
    with pytest.raises(Frozen):
        ledger.reserve_shadowed([TIGHT], Amount(1, "sat"), shadow={TIGHT.key}, frozen_scopes=("global",))
    assert len(ledger.open_holds()) == 1


def test_the_report_lists_would_denials_by_rule_with_the_money_they_would_have_kept(ledger: Ledger) -> None:
    def would(rule: str, spent: Amount | None) -> CallRecord:
        return CallRecord("buy", "would_deny", rule=rule, reason=f"{rule} says no", kind="budget", spent=spent)

    ledger.record_many(
        [
            would("budgets.daily", Amount(60, "sat")),
            would("budgets.daily", Amount(40, "sat")),
            would("budgets.daily", Amount(2_500_000, "usd_micro")),
            would("budgets.daily", None),  # in doubt: nothing settled to count
            would("tools.buy.max_price", Amount(7, "sat")),
            CallRecord("buy", "deny", rule="budgets.daily", kind="budget"),
        ]
    )
    report = day_report(ledger)
    assert [(d.rule, d.count, d.kept) for d in report.would_denials] == [
        ("budgets.daily", 4, (Amount(100, "sat"), Amount(2_500_000, "usd_micro"))),
        ("tools.buy.max_price", 1, (Amount(7, "sat"),)),
    ]
    assert report.would_denials[0].example == "budgets.daily says no"
    assert dict(report.calls) == {"deny": 1, "would_deny": 5}
