"""What operators and watchers read from a ledger: budgets in use (spent, held, in doubt, remaining,
resets), holds by phase, and alerts claimed once. On a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import create_engine, text

from ledgers import Amount, Budget, Ledger, Window
from tests.ledgers.conftest import FakeClock

DAY = Window.calendar("day", "Europe/Paris")


def sats(value: int) -> Amount:
    return Amount(value, "sat")


def states_by_key(ledger: Ledger, **options: str) -> dict[str, tuple[int, int, int, int]]:
    return {
        s.budget.key: (s.spent, s.held, s.in_doubt, s.remaining)
        for s in ledger.budget_states(**options)  # type: ignore[arg-type]
    }


def test_each_budget_in_use_splits_its_use_into_spent_held_and_in_doubt(ledger_url: str, clock: FakeClock) -> None:
    session = Budget("per-session", sats(100), "session:s1")
    daily = Budget("daily", sats(1000), "global", DAY)
    with Ledger.open(ledger_url, clock=clock) as ledger:
        settled = ledger.reserve([session, daily], sats(30), session="s1", tool="buy")
        ledger.settle(settled, sats(25))
        doubtful = ledger.reserve([session, daily], sats(20), session="s1", tool="buy")
        ledger.mark_forwarded(doubtful)
        ledger.mark_in_doubt(doubtful)
        ledger.reserve([session, daily], sats(10), session="s1", tool="buy")  # still open
        assert states_by_key(ledger) == {
            daily.key: (25, 10, 20, 945),
            session.key: (25, 10, 20, 45),
        }
        (daily_state,) = [s for s in ledger.budget_states() if s.budget.name == "daily"]
        # Limits and windows come from the ledger itself: no policy needed to read them.
        assert daily_state.budget == daily
        assert daily_state.window_start == datetime(2026, 11, 20, 23, 0, tzinfo=UTC)  # midnight in Paris
        assert daily_state.resets_at == datetime(2026, 11, 21, 23, 0, tzinfo=UTC)
        assert daily_state.last_used == clock.now()


def test_a_finished_window_and_an_idle_session_are_no_longer_in_use(ledger_url: str, clock: FakeClock) -> None:
    session = Budget("per-session", sats(100), "session:s1")
    daily = Budget("daily", sats(1000), "global", DAY)
    with Ledger.open(ledger_url, clock=clock) as ledger:
        ledger.settle(ledger.reserve([session, daily], sats(30), session="s1"), sats(30))
        clock.advance(13 * 3600)  # the next day in Paris
        assert set(states_by_key(ledger)) == {session.key}
        clock.advance(24 * 3600)  # the session is idle for a day
        assert states_by_key(ledger) == {}
        # ...but a session asked for shows every budget it was charged to.
        assert states_by_key(ledger, session="s1") == {session.key: (30, 0, 0, 70), daily.key: (0, 0, 0, 1000)}


def test_a_redefined_budget_shows_its_new_limit_and_a_session_filter_shows_only_its_budgets(
    ledger_url: str, clock: FakeClock
) -> None:
    with Ledger.open(ledger_url, clock=clock) as ledger:
        ledger.reserve([Budget("per-session", sats(100), "session:a")], sats(10), session="a")
        ledger.reserve([Budget("per-session", sats(100), "session:b")], sats(10), session="b")
    with Ledger.open(ledger_url, clock=clock) as ledger:  # another process, after a policy edit
        ledger.reserve([Budget("per-session", sats(500), "session:a")], sats(10), session="a")
        assert {s.budget.scope: s.budget.limit for s in ledger.budget_states()} == {
            "session:a": sats(500),
            "session:b": sats(100),
        }
        assert [s.budget.scope for s in ledger.budget_states(session="b")] == ["session:b"]


def test_states_of_budgets_never_charged_are_empty(ledger_url: str, clock: FakeClock) -> None:
    with Ledger.open(ledger_url, clock=clock) as ledger:
        (state,) = ledger.states([Budget("daily", sats(1000), "identity:ann", DAY)])
    assert (state.spent, state.held, state.in_doubt, state.remaining, state.last_used) == (0, 0, 0, 1000, None)


def test_an_alert_is_claimed_once_across_ledgers_and_its_end_recorded(ledger_url: str) -> None:
    with Ledger.open(ledger_url) as first, Ledger.open(ledger_url) as second:
        assert first.claim_alert("budget:daily@global|0.5|2026-11-21", "budget") is True
        assert second.claim_alert("budget:daily@global|0.5|2026-11-21", "budget") is False
        first.alert_done("budget:daily@global|0.5|2026-11-21", sent=True, attempts=2)
    engine = create_engine(ledger_url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT state, attempts FROM ledger_alerts")).one()
    engine.dispose()
    assert tuple(row) == ("sent", 2)


def test_an_old_session_still_holding_money_stays_in_use(ledger_url: str, clock: FakeClock) -> None:
    old, idle = Budget("per-session", sats(100), "session:old"), Budget("per-session", sats(100), "session:idle")
    with Ledger.open(ledger_url, clock=clock) as ledger:
        doubtful = ledger.reserve([old], sats(40), session="old")
        ledger.mark_forwarded(doubtful)
        ledger.mark_in_doubt(doubtful)
        ledger.settle(ledger.reserve([idle], sats(10), session="idle"), sats(10))
        clock.advance(3 * 86_400)
        assert states_by_key(ledger) == {old.key: (0, 0, 40, 60)}


def test_hold_counts_name_every_phase_zero_included(ledger: Ledger) -> None:
    budget = Budget("b", sats(1000))
    assert ledger.hold_counts() == {"reserved": 0, "forwarded": 0, "settled": 0, "voided": 0, "in_doubt": 0}
    ledger.reserve([budget], sats(1))
    ledger.settle(ledger.reserve([budget], sats(2)), sats(2))
    forwarded = ledger.reserve([budget], sats(3))
    ledger.mark_forwarded(forwarded)
    assert ledger.hold_counts() == {"reserved": 1, "forwarded": 1, "settled": 1, "voided": 0, "in_doubt": 0}


def test_usage_is_a_budgets_spend_and_holds_in_its_current_window(ledger: Ledger, clock: FakeClock) -> None:
    daily = Budget("daily", sats(1000), "global", DAY)
    ledger.settle(ledger.reserve([daily], sats(30)), sats(25))
    ledger.reserve([daily], sats(10))
    usage = ledger.usage(daily)
    assert (usage.spent, usage.held, usage.remaining) == (25, 10, 965)
    assert usage.window_start == datetime(2026, 11, 20, 23, 0, tzinfo=UTC)  # midnight in Paris
    clock.advance(13 * 3600)  # the next day in Paris
    assert (ledger.usage(daily).spent, ledger.usage(daily).held) == (0, 0)
