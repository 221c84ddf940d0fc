"""Windows: a budget counts its charges within its window, a rate limit its calls within its sliding
window, from durable rows (they survive restarts; nothing resets them); a reservation checks both in
its own transaction, `hit` counts a call that pays nothing. On a real SQLite file and a real PostgreSQL
server."""

from __future__ import annotations

import pytest

from ledgers import Amount, Budget, BudgetExceeded, Ledger, RateLimit, RateLimited, Window
from tests.ledgers.conftest import FakeClock
from tests.ledgers.helpers import query

SAT = "sat"
SESSION = Budget("per-session", Amount(5000, SAT), scope="session:s1")
HOURLY = Budget("hourly", Amount(3000, SAT), scope="identity:alice", window=Window.sliding("1h"))
SUBJECT = "session:s1"


def rows(ledger_url: str, table: str) -> int:
    return int(query(ledger_url, f"SELECT COUNT(*) FROM {table}")[0][0])


# --- budgets --------------------------------------------------------------------------------------------------


def test_a_sliding_window_forgets_old_spend(ledger: Ledger, clock: FakeClock) -> None:
    ledger.settle(ledger.reserve([HOURLY], Amount(3000, SAT)), Amount(3000, SAT))
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve([HOURLY], Amount(1, SAT))
    assert refused.value.retry_after_s is None  # a sliding budget frees up gradually
    clock.advance(3600)
    ledger.reserve([HOURLY], Amount(3000, SAT))


def test_a_calendar_budget_says_when_it_resets(ledger: Ledger) -> None:
    daily = Budget("daily", Amount.parse("2.50 usd"), window=Window.calendar("day"))
    ledger.reserve([daily], Amount.parse("2 usd"))
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve([daily], Amount.parse("1 usd"))
    assert refused.value.retry_after_s == 12 * 3600  # the fake clock stands at noon UTC


# --- rate limits ----------------------------------------------------------------------------------------------


def test_rate_limits_count_durably_and_survive_a_restart(ledger_url: str, clock: FakeClock) -> None:
    per_minute = RateLimit("tool:l402-fetch@session:s1", 2, Window.sliding("1m"))
    with Ledger.open(ledger_url, clock=clock) as ledger:
        ledger.hit([per_minute])
        clock.advance(10)
        ledger.hit([per_minute])
    with Ledger.open(ledger_url, clock=clock) as ledger:
        with pytest.raises(RateLimited) as refused:
            ledger.hit([per_minute])
        assert refused.value.retry_after_s == pytest.approx(50)
        assert ledger.count(per_minute.key, Window.sliding("1m")) == 2
        clock.advance(50)
        ledger.hit([per_minute])


def test_a_rate_limit_is_checked_with_the_reservation(ledger: Ledger, ledger_url: str) -> None:
    once = RateLimit("tool:l402-pay", 1, Window.sliding("1h"))
    ledger.reserve([SESSION], Amount(1, SAT), rate_limits=[once])
    with pytest.raises(RateLimited):
        ledger.reserve([SESSION], Amount(1, SAT), rate_limits=[once])
    assert rows(ledger_url, "ledger_holds") == 1


def test_checking_rates_counts_nothing_and_refuses_as_hit_would(ledger: Ledger, clock: FakeClock) -> None:
    twice = RateLimit("calls:fetch/1m@session:s1", 2, Window.sliding("1m"))
    ledger.check_rates([twice])
    ledger.check_rates([twice])
    assert ledger.count(twice.key, twice.window) == 0
    ledger.hit([twice])
    clock.advance(10)
    ledger.hit([twice])
    with pytest.raises(RateLimited) as refused:
        ledger.check_rates([twice])
    assert (refused.value.rule, refused.value.remaining, refused.value.retry_after_s) == (twice.key, 0, 50)
    assert ledger.count(twice.key, twice.window) == 2


# --- weighted counters (quotas) -------------------------------------------------------------------------------


def quota(cost: int) -> RateLimit:
    return RateLimit("counter:sats/1h@global", 10, Window.sliding("1h"), cost=cost)


def test_a_weighted_counter_admits_costs_up_to_its_limit(ledger: Ledger) -> None:
    ledger.hit([quota(4)])
    ledger.hit([quota(4)])
    with pytest.raises(RateLimited) as refused:
        ledger.hit([quota(4)])
    assert (refused.value.rule, refused.value.remaining, refused.value.unit) == ("counter:sats/1h@global", 2, "calls")
    assert ledger.count("counter:sats/1h@global", Window.sliding("1h")) == 8  # the refusal wrote nothing
    ledger.hit([quota(2)])
    assert ledger.count("counter:sats/1h@global", Window.sliding("1h")) == 10
    with pytest.raises(RateLimited) as full:
        ledger.hit([quota(1)])
    assert full.value.remaining == 0


def test_a_zero_cost_call_is_admitted_even_when_the_counter_is_full(ledger: Ledger) -> None:
    ledger.hit([quota(10)])
    ledger.hit([quota(0)])
    assert ledger.count("counter:sats/1h@global", Window.sliding("1h")) == 10


def test_a_cost_above_the_limit_is_refused_on_an_empty_counter(ledger: Ledger) -> None:
    with pytest.raises(RateLimited) as refused:
        ledger.hit([quota(11)])
    assert refused.value.remaining == 10


def test_weighted_counts_survive_reopening_the_ledger(ledger_url: str, clock: FakeClock) -> None:
    with Ledger.open(ledger_url, clock=clock) as ledger:
        ledger.hit([quota(4)])
        ledger.hit([quota(4)])
    with Ledger.open(ledger_url, clock=clock) as ledger:
        assert ledger.count("counter:sats/1h@global", Window.sliding("1h")) == 8
        with pytest.raises(RateLimited) as refused:
            ledger.hit([quota(4)])
        assert refused.value.remaining == 2
        ledger.hit([quota(2)])


def test_a_weighted_counter_forgets_costs_outside_its_window(ledger: Ledger, clock: FakeClock) -> None:
    ledger.hit([quota(6)])
    clock.advance(1800)
    ledger.hit([quota(4)])
    with pytest.raises(RateLimited) as refused:
        ledger.hit([quota(1)])
    assert refused.value.retry_after_s == pytest.approx(1800)
    clock.advance(1800)
    assert ledger.count("counter:sats/1h@global", Window.sliding("1h")) == 4
    ledger.hit([quota(6)])


def test_count_sums_the_weights_within_the_window_asked(ledger: Ledger, clock: FakeClock) -> None:
    ledger.hit([quota(3)])
    clock.advance(120)
    ledger.hit([quota(5)])
    assert ledger.count("counter:sats/1h@global", Window.sliding("1h")) == 8
    assert ledger.count("counter:sats/1h@global", Window.sliding("1m")) == 5
    assert ledger.count("counter:other/1h@global", Window.sliding("1h")) == 0


def test_a_reservation_counts_its_quota_cost_with_the_hold(ledger: Ledger) -> None:
    budget = Budget("per-session", Amount(1000, "sat"), scope=SUBJECT)
    ledger.reserve([budget], Amount(100, "sat"), rate_limits=[quota(7)])
    with pytest.raises(RateLimited):
        ledger.reserve([budget], Amount(100, "sat"), rate_limits=[quota(4)])
    assert ledger.usage(budget).held == 100  # the refused reservation held nothing
    ledger.reserve([budget], Amount(100, "sat"), rate_limits=[quota(3)])
    assert ledger.count("counter:sats/1h@global", Window.sliding("1h")) == 10


def test_every_counter_of_a_call_must_have_room(ledger: Ledger) -> None:
    calls = RateLimit("calls:t/1m@session:s1", 100, Window.sliding("1m"))
    ledger.hit([calls, quota(9)])
    with pytest.raises(RateLimited):
        ledger.hit([calls, quota(2)])
    assert ledger.count(calls.key, Window.sliding("1m")) == 1
