"""The ledger's promises, each on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ledgers import (
    SCHEMA_VERSION,
    AlreadyPaid,
    Amount,
    AmountError,
    BalanceObservation,
    Budget,
    BudgetExceeded,
    CallRecord,
    HoldStateError,
    Ledger,
    PaymentInFlight,
    RateLimit,
    RateLimited,
    SchemaError,
    StorageError,
    UnitMismatch,
    Window,
    default_path,
)
from tests.ledgers.conftest import FakeClock

SAT = "sat"
SESSION = Budget("per-session", Amount(5000, SAT), scope="session:s1")
HOURLY = Budget("hourly", Amount(3000, SAT), scope="identity:alice", window=Window.sliding("1h"))


@pytest.fixture
def ledger(ledger_url: str, clock: FakeClock) -> Iterator[Ledger]:
    with Ledger.open(ledger_url, clock=clock) as opened:
        yield opened


def rows(ledger_url: str, table: str) -> int:
    engine = create_engine(ledger_url)
    with engine.connect() as conn:
        count = int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())
    engine.dispose()
    return count


def test_a_reservation_counts_until_settled_at_the_actual_amount(ledger: Ledger) -> None:
    hold = ledger.reserve([SESSION], Amount(3000, SAT))
    assert (ledger.usage(SESSION).held, ledger.usage(SESSION).spent) == (3000, 0)
    ledger.mark_forwarded(hold)
    ledger.settle(hold, Amount(2500, SAT))
    usage = ledger.usage(SESSION)
    assert (usage.held, usage.spent, usage.remaining) == (0, 2500, 2500)
    assert ledger.hold(hold).phase == "settled"
    assert ledger.hold(hold).settled == Amount(2500, SAT)


def test_a_reservation_over_the_limit_is_refused_with_what_remains(ledger: Ledger) -> None:
    ledger.reserve([SESSION], Amount(4000, SAT))
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve([SESSION], Amount(1001, SAT))
    assert (refused.value.rule, refused.value.remaining, refused.value.unit) == ("per-session", 1000, SAT)
    assert "1001 sat asked, 1000 sat left of 5000" in str(refused.value)
    ledger.reserve([SESSION], Amount(1000, SAT))  # exactly the limit is fine


def test_every_budget_must_pass_and_a_refusal_writes_nothing(ledger: Ledger, ledger_url: str) -> None:
    ledger.reserve([HOURLY], Amount(2500, SAT))
    with pytest.raises(BudgetExceeded, match="hourly"):
        ledger.reserve([SESSION, HOURLY], Amount(1000, SAT))
    assert ledger.usage(SESSION).held == 0
    assert rows(ledger_url, "ledger_holds") == 1


def test_budgets_in_other_units_are_charged_in_their_own_unit_rounded_up(ledger: Ledger) -> None:
    in_msat = Budget("msat-budget", Amount(10_500, "msat"))
    hold = ledger.reserve([SESSION, in_msat], Amount(10, SAT))
    assert ledger.usage(in_msat).held == 10_000
    ledger.settle(hold, Amount(9500, "msat"))
    assert ledger.usage(in_msat).spent == 10_000  # 9.5 sat settles as 10 sat on a sat hold
    assert ledger.usage(SESSION).spent == 10


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


def test_a_clock_that_jumps_back_does_not_reopen_a_window(ledger: Ledger, clock: FakeClock) -> None:
    clock.advance(3600)
    ledger.settle(ledger.reserve([HOURLY], Amount(3000, SAT)), Amount(3000, SAT))
    clock.advance(-7200)
    with pytest.raises(BudgetExceeded):
        ledger.reserve([HOURLY], Amount(1, SAT))
    assert ledger.hold(1).created == datetime(2026, 11, 21, 13, 0, tzinfo=UTC)


def test_an_idempotency_key_cannot_be_paid_twice(ledger: Ledger) -> None:
    hold = ledger.reserve([SESSION], Amount(10, SAT), idempotency_key="hash-1")
    with pytest.raises(PaymentInFlight, match="already in progress"):
        ledger.reserve([SESSION], Amount(10, SAT), idempotency_key="hash-1")
    ledger.mark_forwarded(hold)
    ledger.mark_in_doubt(hold)
    with pytest.raises(PaymentInFlight, match="already in doubt"):
        ledger.reserve([SESSION], Amount(10, SAT), idempotency_key="hash-1")
    ledger.resolve(hold, Amount(10, SAT))
    with pytest.raises(AlreadyPaid, match="payment hash-1 was already made"):
        ledger.reserve([SESSION], Amount(10, SAT), idempotency_key="hash-1")


def test_a_voided_key_may_be_tried_again(ledger: Ledger) -> None:
    ledger.void(ledger.reserve([SESSION], Amount(10, SAT), idempotency_key="hash-2"))
    ledger.reserve([SESSION], Amount(10, SAT), idempotency_key="hash-2")


def test_an_in_doubt_hold_stays_counted_in_full_until_resolved(ledger: Ledger) -> None:
    hold = ledger.reserve([SESSION], Amount(4000, SAT))
    ledger.mark_forwarded(hold)
    ledger.mark_in_doubt(hold)
    assert ledger.usage(SESSION).held == 4000
    with pytest.raises(BudgetExceeded):
        ledger.reserve([SESSION], Amount(1001, SAT))
    ledger.resolve(hold, Amount(0, SAT))
    assert ledger.hold(hold).phase == "voided"
    assert ledger.usage(SESSION).remaining == 5000


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (["settle", "settle"], "is settled: it cannot become settled"),
        (["void", "settle"], "is voided: it cannot become settled"),
        (["settle", "void"], "is settled: it cannot become voided"),
        (["mark_in_doubt"], "is reserved: it cannot become in_doubt"),
        (["resolve"], "is reserved: it cannot become settled"),
        (["forward", "forward"], "is forwarded: it cannot become forwarded"),
    ],
)
def test_a_hold_resolves_at_most_once(ledger: Ledger, steps: list[str], message: str) -> None:
    hold = ledger.reserve([SESSION], Amount(100, SAT))
    do = {
        "settle": lambda: ledger.settle(hold, Amount(50, SAT)),
        "void": lambda: ledger.void(hold),
        "mark_in_doubt": lambda: ledger.mark_in_doubt(hold),
        "resolve": lambda: ledger.resolve(hold, Amount(50, SAT)),
        "forward": lambda: ledger.mark_forwarded(hold),
    }
    for step in steps[:-1]:
        do[step]()
    before = ledger.usage(SESSION)
    with pytest.raises(HoldStateError, match=message):
        do[steps[-1]]()
    assert ledger.usage(SESSION) == before


@pytest.mark.parametrize(
    ("amount", "error"),
    [
        (Amount.parse("1 usd"), UnitMismatch),
        (-5, AmountError),
        ("5000 sat", AmountError),
    ],
)
def test_bad_amounts_write_nothing(ledger: Ledger, ledger_url: str, amount: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        ledger.reserve([SESSION], amount)  # type: ignore[arg-type]
    assert rows(ledger_url, "ledger_holds") == 0
    assert rows(ledger_url, "ledger_charges") == 0


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


def test_the_latest_balance_observation_and_its_age(ledger: Ledger, clock: FakeClock) -> None:
    origin = "https://api.example.com"
    assert ledger.latest(origin) is None
    ledger.observe(BalanceObservation("l402-balance", origin, Amount(40, f"credits:{origin}"), upstream_stale=True))
    clock.advance(30)
    upstream_time = datetime(2026, 11, 21, 11, 59, tzinfo=UTC)
    ledger.observe(
        BalanceObservation("l402-fetch", origin, Amount(39, f"credits:{origin}"), "ok", upstream_time, False)
    )
    clock.advance(12)
    latest = ledger.latest(origin)
    assert latest is not None
    observation, age = latest
    assert (observation.source, observation.amount, observation.status) == (
        "l402-fetch",
        Amount(39, f"credits:{origin}"),
        "ok",
    )
    assert observation.upstream_time == upstream_time and observation.upstream_stale is False
    assert age == pytest.approx(12)


def test_call_events_are_appended_for_the_audit_trail(ledger: Ledger, ledger_url: str) -> None:
    first = ledger.record(CallRecord("l402-fetch", "allow", session="s1", price=Amount(10, SAT), latency_us=900))
    second = ledger.record(CallRecord("l402-pay", "deny", rule="no-raw-invoices", reason="disabled"))
    assert second > first
    assert rows(ledger_url, "ledger_call_events") == 2


def test_a_ledger_from_a_newer_release_is_refused(ledger_url: str) -> None:
    Ledger.open(ledger_url).close()
    engine = create_engine(ledger_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE ledger_meta SET value = :v WHERE key = 'schema_version'"), {"v": SCHEMA_VERSION + 1})
    engine.dispose()
    with pytest.raises(SchemaError, match=f"version {SCHEMA_VERSION + 1}, newer than this release"):
        Ledger.open(ledger_url)


def test_a_ledger_file_of_the_first_release_opens_with_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    schema = (Path(__file__).parent / "fixtures" / "ledger_v1.sqlite.sql").read_text()
    with sqlite3.connect(path) as conn:
        conn.executescript(schema)
        conn.execute("INSERT INTO ledger_meta VALUES ('schema_version', '1')")
        conn.execute(
            "INSERT INTO ledger_holds (idempotency_key, phase, unit, amount, settled, owner, mixed_units,"
            " created_us, updated_us) VALUES ('h', 'settled', 'sat', 700, 600, 'gone', 0, 1, 1)"
        )
        conn.execute(
            "INSERT INTO ledger_charges (hold_id, budget, unit, held, spent, created_us)"
            " VALUES (1, 'budget:per-session@session:s1', 'sat', 0, 600, 1)"
        )
    conn.close()
    with Ledger.open(path) as ledger:
        assert ledger.usage(SESSION).spent == 600
        with pytest.raises(AlreadyPaid):
            ledger.reserve([SESSION], Amount(1, SAT), idempotency_key="h")


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


def test_sqlite_is_durable_and_concurrent_by_configuration(tmp_path: Path) -> None:
    ledger = Ledger.open(tmp_path / "l.db")
    with ledger._write() as conn:  # the ledger's own connection settings
        pragmas = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in ("journal_mode", "synchronous")}
    ledger.close()
    assert pragmas == {"journal_mode": "wal", "synchronous": 2}  # 2 = FULL
