"""The store: where the ledger is (a per-user SQLite file by default, or PostgreSQL), how it is opened
(durable, or read-only next to a writer), what it says when it cannot be, and its clock (stored times
never go backwards). On a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ledgers import Amount, Budget, BudgetExceeded, Ledger, SchemaError, StorageError, Window, default_path, location
from tests.ledgers.conftest import FakeClock

SAT = "sat"
HOURLY = Budget("hourly", Amount(3000, SAT), scope="identity:alice", window=Window.sliding("1h"))


def sats(value: int) -> Amount:
    return Amount(value, SAT)


def test_the_default_ledger_is_a_per_user_sqlite_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_path() == tmp_path / "guard" / "ledger.db"
    Ledger.open().close()
    assert (tmp_path / "guard" / "ledger.db").exists()


def test_an_unreachable_database_is_a_storage_error_without_the_password() -> None:
    with pytest.raises(StorageError) as failed:
        Ledger.open("postgresql+psycopg://guard:hunter2@127.0.0.1:1/nothing")
    assert "cannot open the ledger at postgresql+psycopg://guard:***@127.0.0.1:1/nothing" in str(failed.value)
    assert "hunter2" not in str(failed.value)


def test_a_ledger_is_located_for_people_without_its_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert location(None) == str(tmp_path / "guard" / "ledger.db")
    assert location(tmp_path / "l.db") == str(tmp_path / "l.db")
    assert location("postgresql+psycopg://guard:hunter2@db.example/ledger") == (
        "postgresql+psycopg://guard:***@db.example/ledger"
    )


def test_sqlite_is_durable_and_concurrent_by_configuration(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "l.db")
    with ledger._store.write() as conn:  # the ledger's own connection settings
        pragmas = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in ("journal_mode", "synchronous")}
    ledger.close()
    assert pragmas == {"journal_mode": "wal", "synchronous": 2}  # 2 = FULL


def test_a_clock_that_jumps_back_does_not_reopen_a_window(ledger: Ledger, clock: FakeClock) -> None:
    clock.advance(3600)
    ledger.settle(ledger.reserve([HOURLY], Amount(3000, SAT)), Amount(3000, SAT))
    clock.advance(-7200)
    with pytest.raises(BudgetExceeded):
        ledger.reserve([HOURLY], Amount(1, SAT))
    assert ledger.hold(1).created == datetime(2026, 11, 21, 13, 0, tzinfo=UTC)


def test_a_reopened_ledger_never_stores_a_time_before_one_stored_already(ledger_url: str, clock: FakeClock) -> None:
    with Ledger.open(ledger_url, clock=clock) as ledger:
        clock.advance(3600)
        ledger.settle(ledger.reserve([HOURLY], sats(3000)), sats(3000))
    clock.advance(-7200)  # another process, whose clock is two hours behind
    with Ledger.open(ledger_url, clock=clock) as ledger:
        with pytest.raises(BudgetExceeded):
            ledger.reserve([HOURLY], sats(1))
        assert ledger.hold(ledger.reserve([], sats(1))).created == datetime(2026, 11, 21, 13, 0, tzinfo=UTC)


# --- read-only, next to a writer ------------------------------------------------------------------------------


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
