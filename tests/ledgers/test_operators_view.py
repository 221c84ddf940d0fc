"""What operators read from a ledger: budgets in use (spent, held, in doubt, remaining, resets), read-only
opening next to a writer, and alerts claimed once. On a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ledgers import Amount, Budget, Ledger, SchemaError, StorageError, Window

from .conftest import FakeClock

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


def test_read_only_opening_never_writes(ledger_url: str) -> None:
    with Ledger.open(ledger_url) as writer:
        writer.reserve([Budget("b", sats(100))], sats(10))
        with Ledger.open(ledger_url, read_only=True) as reader:
            assert [s.held for s in reader.budget_states()] == [10]
            assert reader.hold_counts()["reserved"] == 1
            with pytest.raises(StorageError, match="read-only"):
                reader.reserve([Budget("b", sats(100))], sats(10))
        engine = create_engine(ledger_url)
        with engine.connect() as conn:
            owners = conn.execute(text("SELECT COUNT(*) FROM ledger_owners")).scalar()
        engine.dispose()
        assert owners == 1  # only the writer registered itself


def test_a_sqlite_reader_is_not_blocked_by_a_writer_holding_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path) as writer:
        writer.reserve([Budget("b", sats(100))], sats(10))
    engine = create_engine(f"sqlite:///{path}", connect_args={"isolation_level": None})
    with engine.connect() as conn:
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # a guard in the middle of a reservation
        conn.exec_driver_sql("UPDATE ledger_holds SET amount = amount")
        with Ledger.open(path, read_only=True) as reader:
            assert [s.held for s in reader.budget_states()] == [10]
        conn.exec_driver_sql("ROLLBACK")
    engine.dispose()


def test_a_missing_sqlite_file_reads_as_an_empty_ledger_and_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "ledger.db"
    with Ledger.open(path, read_only=True) as reader:
        assert reader.budget_states() == []
        assert reader.observed() == []
    assert not path.exists() and not path.parent.exists()


def test_a_ledger_of_an_older_schema_is_not_read_but_named(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    Ledger.open(path).close()
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE ledger_meta SET value = '3' WHERE key = 'schema_version'"))
    engine.dispose()
    with pytest.raises(SchemaError, match=r"version 3.*start `guard run` once"):
        Ledger.open(path, read_only=True)


def test_an_old_session_still_holding_money_stays_in_use(ledger_url: str, clock: FakeClock) -> None:
    old, idle = Budget("per-session", sats(100), "session:old"), Budget("per-session", sats(100), "session:idle")
    with Ledger.open(ledger_url, clock=clock) as ledger:
        doubtful = ledger.reserve([old], sats(40), session="old")
        ledger.mark_forwarded(doubtful)
        ledger.mark_in_doubt(doubtful)
        ledger.settle(ledger.reserve([idle], sats(10), session="idle"), sats(10))
        clock.advance(3 * 86_400)
        assert states_by_key(ledger) == {old.key: (0, 0, 40, 60)}
