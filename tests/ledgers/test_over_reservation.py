"""A payment above its reservation is recorded whole (the ledger never says less than what left), on a real
SQLite file and a real PostgreSQL server; and a ledger file of the release before (schema version 4) opens
with its rows, upgraded."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ledgers import SCHEMA_VERSION, AlreadyPaid, Amount, Budget, BudgetExceeded, Ledger, Rates, Window
from ledgers._schema import MIGRATIONS
from tests.conftest import FakeClock
from tests.ledgers.helpers import query

SAT = "sat"
SESSION = Budget("per-session", Amount(100, SAT), scope="session:s1")
DAILY_MSAT = Budget("daily", Amount(1_000_000, "msat"), window=Window.calendar("day"))
FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def ledger(ledger_url: str, clock: FakeClock) -> Iterator[Ledger]:
    with Ledger.open(ledger_url, clock=clock) as opened:
        yield opened


def test_settling_above_the_hold_records_all_that_was_paid_against_every_budget(ledger: Ledger) -> None:
    hold = ledger.reserve([SESSION, DAILY_MSAT], Amount(10, SAT), priced_by="max_price")
    ledger.mark_forwarded(hold)
    ledger.settle(hold, Amount(50, SAT))

    info = ledger.hold(hold)
    assert (info.phase, info.amount, info.settled) == ("settled", Amount(10, SAT), Amount(50, SAT))
    assert info.over_reservation == Amount(40, SAT)
    assert info.priced_by == "max_price"
    assert (ledger.usage(SESSION).spent, ledger.usage(SESSION).held) == (50, 0)
    assert ledger.usage(DAILY_MSAT).spent == 50_000  # the budget in msat counts it in its unit
    assert [h.id for h in ledger.over_reservations(info.created)] == [hold]


def test_a_settlement_in_another_unit_above_the_hold_rounds_up_into_each_budgets_unit(ledger: Ledger) -> None:
    hold = ledger.reserve([SESSION, DAILY_MSAT], Amount(10_500, "msat"))  # SESSION holds 11 sat
    ledger.settle(hold, Amount(30_001, "msat"))
    assert ledger.hold(hold).settled == Amount(30_001, "msat")
    assert ledger.usage(SESSION).spent == 31  # rounded up: never less than what left
    assert ledger.usage(DAILY_MSAT).spent == 30_001


def test_resolving_an_in_doubt_hold_above_it_records_the_whole_amount(ledger: Ledger) -> None:
    hold = ledger.reserve([SESSION], Amount(20, SAT))
    ledger.mark_forwarded(hold)
    ledger.mark_in_doubt(hold)
    ledger.resolve(hold, Amount(35, SAT))
    info = ledger.hold(hold)
    assert (info.phase, info.settled, info.over_reservation) == ("settled", Amount(35, SAT), Amount(15, SAT))
    assert (ledger.usage(SESSION).spent, ledger.usage(SESSION).held) == (35, 0)


def test_a_budget_over_its_limit_shows_it_and_refuses_every_further_reservation(ledger: Ledger) -> None:
    hold = ledger.reserve([SESSION], Amount(90, SAT))
    ledger.settle(hold, Amount(130, SAT))
    usage = ledger.usage(SESSION)
    assert (usage.spent, usage.remaining) == (130, 0)
    [state] = ledger.states([SESSION])
    assert (state.spent, state.used, state.remaining) == (130, 130, 0)
    for amount in (Amount(1, SAT), Amount(0, SAT)):
        with pytest.raises(BudgetExceeded) as refused:
            ledger.reserve([SESSION], amount)
        assert refused.value.remaining == 0
    assert ledger.open_holds() == []  # nothing was written


def test_a_settlement_at_or_below_the_hold_is_no_over_reservation(ledger: Ledger, clock: FakeClock) -> None:
    since = clock.now()
    exact = ledger.reserve([SESSION], Amount(30, SAT))
    ledger.settle(exact, Amount(30_000, "msat"))
    lower = ledger.reserve([SESSION], Amount(30, SAT))
    ledger.settle(lower, Amount(5, SAT))
    assert ledger.hold(exact).over_reservation is None and ledger.hold(lower).over_reservation is None
    assert ledger.over_reservations(since) == []
    assert ledger.usage(SESSION).spent == 35


def test_over_reservations_lists_only_holds_settled_since_the_moment_asked(ledger: Ledger, clock: FakeClock) -> None:
    early = ledger.reserve([SESSION], Amount(1, SAT))
    ledger.settle(early, Amount(2, SAT))
    clock.advance(60)
    since = clock.now()
    late = ledger.reserve([SESSION], Amount(1, SAT))
    ledger.settle(late, Amount(3, SAT))
    assert [h.id for h in ledger.over_reservations(since)] == [late]


def test_a_settlement_in_a_unit_the_hold_converts_only_with_rates_records_the_whole_amount(
    ledger_url: str, clock: FakeClock
) -> None:
    usd = Budget("usd", Amount(1_000_000, "usd_micro"), scope="session:s1")
    with Ledger.open(ledger_url, clock=clock, rates=Rates({("usdc", "usd_micro"): Fraction(1)})) as ledger:
        hold = ledger.reserve([usd], Amount(100_000, "usdc"))
        ledger.settle(hold, Amount(250_000, "usdc"))
        assert ledger.usage(usd).spent == 250_000


# --- a ledger of the release before (schema version 4) ----------------------------------------------------


def test_a_version_4_ledger_file_opens_with_its_rows_and_then_records_payments_above_their_holds(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "v4.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((FIXTURES / "ledger_v4.sqlite.sql").read_text())
        conn.execute("INSERT INTO ledger_meta VALUES ('schema_version', '4')")
        insert_v4_rows(conn)
    conn.close()
    with Ledger.open(path, clock=clock) as ledger:
        check_v4_rows_then_settle_above(ledger)
    url = f"sqlite:///{path}"
    assert query(url, "SELECT value FROM ledger_meta WHERE key = 'schema_version'")[0][0] == str(SCHEMA_VERSION) == "5"
    indexes = {row[0] for row in query(url, "SELECT name FROM sqlite_master WHERE tbl_name = 'ledger_holds'")}
    assert indexes >= {
        "ledger_holds",
        "ledger_holds_open_key",
        "ledger_holds_phase_owner",
        "ledger_holds_updated",
        "ledger_holds_balance_time",
        "ledger_holds_created",
        "ledger_holds_session",
    }
    # The quote observations of version 4 (whole URLs, maybe with keys in their queries) are gone.
    assert query(url, "SELECT key FROM ledger_observations") == [("wallet:alby",)]


def test_a_version_4_ledger_on_either_database_is_upgraded_in_place(ledger_url: str, clock: FakeClock) -> None:
    engine = create_engine(ledger_url)
    with engine.begin() as conn:
        for step in MIGRATIONS[:4]:
            step(conn)
        conn.execute(text("INSERT INTO ledger_meta (key, value) VALUES ('schema_version', '4')"))
        insert_v4_rows(conn.connection.driver_connection)
    engine.dispose()
    with Ledger.open(ledger_url, clock=clock) as ledger:
        check_v4_rows_then_settle_above(ledger)
    # Opening again migrates nothing twice.
    with Ledger.open(ledger_url, clock=clock) as ledger:
        assert ledger.hold(1).settled == Amount(600, SAT)


V4_ROWS = [
    "INSERT INTO ledger_holds (idempotency_key, phase, unit, amount, settled, owner, mixed_units, created_us,"
    " updated_us, balance_key, server, resource, external)"
    " VALUES ('h1', 'settled', 'sat', 700, 600, 'gone', false, 1, 1, NULL, 'shop', 'https://a.example/x', false)",
    "INSERT INTO ledger_holds (idempotency_key, phase, unit, amount, settled, owner, mixed_units, created_us,"
    " updated_us, balance_key, server, resource, external)"
    " VALUES ('h2', 'in_doubt', 'sat', 20, NULL, 'gone', false, 2, 2, 'wallet:alby', 'shop', NULL, false)",
    "INSERT INTO ledger_charges (hold_id, budget, unit, held, spent, created_us)"
    " VALUES (1, 'budget:per-session@session:s1', 'sat', 0, 600, 1)",
    "INSERT INTO ledger_charges (hold_id, budget, unit, held, spent, created_us)"
    " VALUES (2, 'budget:per-session@session:s1', 'sat', 20, 0, 2)",
    "INSERT INTO ledger_observations (source, key, amount, unit, status, seen_us)"
    " VALUES ('quote', 'quote:https://a.example/x?api_key=sk-live-1', 30, 'sat', 'quote', 1)",
    "INSERT INTO ledger_observations (source, key, amount, unit, status, seen_us)"
    " VALUES ('get_balance', 'wallet:alby', 5000, 'sat', NULL, 1)",
]


def insert_v4_rows(conn: object) -> None:
    """A settled hold, one in doubt, their charges, a quote observation and a balance (DB-API cursor SQL)."""
    cursor = conn.cursor()  # type: ignore[attr-defined]
    for statement in V4_ROWS:
        cursor.execute(statement)
    cursor.close()


def check_v4_rows_then_settle_above(ledger: Ledger) -> None:
    per_session = Budget("per-session", Amount(1000, SAT), scope="session:s1")
    settled, doubtful = ledger.hold(1), ledger.hold(2)
    assert (settled.phase, settled.amount, settled.settled, settled.resource) == (
        "settled",
        Amount(700, SAT),
        Amount(600, SAT),
        "https://a.example/x",
    )
    assert (settled.priced_by, settled.over_reservation) == (None, None)
    assert (doubtful.phase, doubtful.balance_key) == ("in_doubt", "wallet:alby")
    usage = ledger.usage(per_session)
    assert (usage.spent, usage.held) == (600, 20)
    with pytest.raises(AlreadyPaid):
        ledger.reserve([per_session], Amount(1, SAT), idempotency_key="h1")
    ledger.resolve(2, Amount(50, SAT))  # the old in-doubt hold turns out to have paid more than it held
    assert ledger.hold(2).over_reservation == Amount(30, SAT)
    assert ledger.usage(per_session).spent == 650
    assert ledger.quote("https://a.example/x") is None
