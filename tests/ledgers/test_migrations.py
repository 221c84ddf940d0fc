"""Migrations: a ledger file of every released schema opens with its rows, upgraded in place once (on a
real SQLite file, and on PostgreSQL built by the released steps); a ledger from a newer release is
refused. Version 6 moves old call events and observations to structured facts; version 8 adds the kill
switch's freezes, which an upgraded ledger of every release then honours.

Frozen schemas of released SQLite files are in tests/ledgers/fixtures/ (`ledger_vN.sqlite.sql`)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ledgers import (
    SCHEMA_VERSION,
    AlreadyPaid,
    Amount,
    Approval,
    Budget,
    CallRecord,
    Frozen,
    Ledger,
    RateLimit,
    RateLimited,
    SchemaError,
    Window,
)
from ledgers._schema import MIGRATIONS
from ledgers._time import to_us
from tests.ledgers.conftest import FakeClock
from tests.ledgers.helpers import query

FIXTURES = Path(__file__).parent / "fixtures"
SAT = "sat"
SESSION = Budget("per-session", Amount(5000, SAT), scope="session:s1")
SUBJECT = "session:s1"
DIGEST = "a" * 64
HOUR_S = 3600.0


def quota(cost: int) -> RateLimit:
    return RateLimit("counter:sats/1h@global", 10, Window.sliding("1h"), cost=cost)


def ask(ledger: Ledger) -> Approval:
    return ledger.request_approval(SUBJECT, "l402-pay", DIGEST, identity="alice", expire_after_s=HOUR_S)


def released(conn: object, version: int) -> None:
    """Build the schema of a released `version` with its own steps, as that release would have."""
    for step in MIGRATIONS[:version]:
        step(conn)  # type: ignore[arg-type]


def run_sql(conn: object, statements: list[str]) -> None:
    """Plain SQL on a DB-API connection (sqlite3 or psycopg)."""
    cursor = conn.cursor()  # type: ignore[attr-defined]
    for statement in statements:
        cursor.execute(statement)
    cursor.close()


def test_a_ledger_from_a_newer_release_is_refused(ledger_url: str) -> None:
    Ledger.open(ledger_url).close()
    engine = create_engine(ledger_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE ledger_meta SET value = :v WHERE key = 'schema_version'"), {"v": SCHEMA_VERSION + 1})
    engine.dispose()
    with pytest.raises(SchemaError, match=f"version {SCHEMA_VERSION + 1}, newer than this release"):
        Ledger.open(ledger_url)


# --- version 1, the first release -----------------------------------------------------------------------------


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
        check_freezes_honoured(ledger)


def check_freezes_honoured(ledger: Ledger) -> None:
    """An upgraded ledger has no freeze, takes one, refuses a frozen scope's reservation, and lifts it."""
    assert ledger.freezes() == []
    ledger.freeze("session:s1", reason="upgrade check", by="ops")
    with pytest.raises(Frozen, match="frozen for session s1 by ops: upgrade check"):
        ledger.reserve([SESSION], Amount(1, SAT), frozen_scopes=["global", "session:s1"])
    assert ledger.unfreeze("session:s1", by="ops") is not None
    ledger.void(ledger.reserve([SESSION], Amount(1, SAT), frozen_scopes=["global", "session:s1"]))


def old_ledger_file(path: Path, clock: FakeClock, events: int) -> None:
    """A SQLite ledger as guard 0.1.0 wrote it (schema version 1), with unweighted rate events."""
    schema = (Path(__file__).parent / "fixtures" / "ledger_v1.sqlite.sql").read_text()
    now = to_us(clock.now())
    with sqlite3.connect(path) as conn:
        conn.executescript(schema)
        conn.execute("INSERT INTO ledger_meta VALUES ('schema_version', '1')")
        conn.executemany(
            "INSERT INTO ledger_rate_events (key, at_us) VALUES ('counter:sats/1h@global', ?)",
            [(now - (n + 1) * 1_000_000,) for n in range(events)],
        )
    conn.close()


def test_a_first_release_ledger_file_is_upgraded_and_its_rate_events_count_once_each(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "old.db"
    old_ledger_file(path, clock, events=3)
    with Ledger.open(path, clock=clock) as ledger:
        assert ledger.count("counter:sats/1h@global", Window.sliding("1h")) == 3
        with pytest.raises(RateLimited) as refused:
            ledger.hit([quota(8)])
        assert refused.value.remaining == 7
        ledger.hit([quota(7)])
        pending = ask(ledger)
        ledger.decide_approval(pending.id, approve=True)
        ledger.use_approval(pending.id)
    url = f"sqlite:///{path}"
    assert query(url, "SELECT value FROM ledger_meta WHERE key = 'schema_version'")[0][0] == str(SCHEMA_VERSION)
    assert SCHEMA_VERSION == 9
    assert sorted(row[0] for row in query(url, "SELECT weight FROM ledger_rate_events")) == [1, 1, 1, 7]
    assert [row[0] for row in query(url, "SELECT state FROM ledger_approvals")] == ["used"]


def test_a_version_1_ledger_on_either_database_is_upgraded_in_place(database_url: str, clock: FakeClock) -> None:
    engine = create_engine(database_url)
    with engine.begin() as conn:
        MIGRATIONS[0](conn)  # the first release's schema, as it created it
        conn.execute(text("INSERT INTO ledger_meta (key, value) VALUES ('schema_version', '1')"))
        conn.execute(
            text("INSERT INTO ledger_rate_events (key, at_us) VALUES ('counter:sats/1h@global', :t)"),
            [{"t": to_us(clock.now()) - n * 1_000_000} for n in (1, 2)],
        )
    engine.dispose()
    with Ledger.open(database_url, clock=clock) as ledger:
        assert ledger.count("counter:sats/1h@global", Window.sliding("1h")) == 2
        ledger.hit([quota(8)])
        with pytest.raises(RateLimited):
            ledger.hit([quota(1)])
        approval = ask(ledger)
        assert ledger.decide_approval(approval.id, approve=False).state == "denied"
    assert query(database_url, "SELECT value FROM ledger_meta WHERE key = 'schema_version'")[0][0] == str(
        SCHEMA_VERSION
    )
    # Opening again migrates nothing twice.
    with Ledger.open(database_url, clock=clock) as ledger:
        assert ledger.count("counter:sats/1h@global", Window.sliding("1h")) == 10


# --- version 4: before payments above their holds were recorded whole ----------------------------------------


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
        check_freezes_honoured(ledger)
    url = f"sqlite:///{path}"
    assert query(url, "SELECT value FROM ledger_meta WHERE key = 'schema_version'")[0][0] == str(SCHEMA_VERSION) == "9"
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


def test_a_version_4_ledger_on_either_database_is_upgraded_in_place(database_url: str, clock: FakeClock) -> None:
    engine = create_engine(database_url)
    with engine.begin() as conn:
        for step in MIGRATIONS[:4]:
            step(conn)
        conn.execute(text("INSERT INTO ledger_meta (key, value) VALUES ('schema_version', '4')"))
        insert_v4_rows(conn.connection.driver_connection)
    engine.dispose()
    with Ledger.open(database_url, clock=clock) as ledger:
        check_v4_rows_then_settle_above(ledger)
    # Opening again migrates nothing twice.
    with Ledger.open(database_url, clock=clock) as ledger:
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
    run_sql(conn, V4_ROWS)


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


# --- version 5: before call events and observations carried structured facts ---------------------------------


# Call events as guard wrote them before version 6 (rule, reason), and the facts version 6 reads in them.
V5_DENIALS = [
    ("default", "x is not allowed by the policy (default: deny)", "default", None),
    ("tools.l402-pay", "the policy denies l402-pay", "tool", None),
    ("tools.*", "the policy denies every tool", "tool", None),
    ("tools.l402-fetch.when[0]", "url must match https://*", "condition", None),
    (
        "tools.l402-pay",
        "l402-pay needs a human's approval: ask the operator to run `guard approvals approve ap_1`, then retry",
        "approval",
        None,
    ),
    ("tools.l402-pay", "the operator denied this call to l402-pay", "approval", None),
    ("approvals", "approval ap_1 is not approved, was used already, or expired", "approval", None),
    ("adapters.l402_mcp", "the invoice cannot be read", "adapter", None),
    ("tools.l402-fetch", "no price, no pay: the price of l402-fetch is unknown", "price", None),
    ("tools.l402-fetch.max_price", "the price 50 sat is over the per-call cap of 10 sat", "price", None),
    ("budgets", "no budget covers payments in usd_micro: paying tools need one", "budget", None),
    ("budgets.daily", "budget daily (global, per 1d): 50 sat asked, 10 sat left of 100", "budget", None),
    ("tools.l402-fetch.rate_limit", "rate limit reached: 2 calls per minute for l402-fetch", "rate_limit", None),
    ("tools.*.quotas[1]", "rate limit reached: counter sats at most 5 per day", "quota", None),
    (
        "balances.stale_after",
        "the balance wallet:alby was seen 2h ago and is stale (older than 1m); the guard will not pay on it",
        "stale_balance",
        "wallet:alby",
    ),
    ("balances", "the balance p402:sess_1 is expired", "balance", None),
    ("idempotency", "payment ab12 is already in progress: paying again could pay twice", "idempotency", None),
    ("wire", "a request without an id is not answered", "wire", None),
    ("no-raw-invoices", "a rule name no guard wrote", None, None),
]
# Observations before version 6, and whether version 6 takes their balance for money.
V5_OBSERVATIONS = [
    ("get_balance", "wallet:alby", 5000, "sat", True),
    ("p402", "p402:sess_1", 2_000_000, "usd_micro", True),
    ("l402-balance", "credits:https://api.example", 40, "credits:https://api.example", False),
    ("session_budget", "tokens:s1", 900, "tokens", False),
]


def v5_rows() -> list[str]:
    """A settled hold and its charge, an allowed call, every kind of denial, and observations (as SQL)."""
    statements = [
        "INSERT INTO ledger_holds (idempotency_key, phase, unit, amount, settled, owner, mixed_units, created_us,"
        " updated_us, balance_key, server, resource, external, priced_by) VALUES ('h1', 'settled', 'sat', 10, 50,"
        " 'gone', false, 1, 1, 'wallet:alby', 'shop', 'https://a.example/x', false, 'quote')",
        "INSERT INTO ledger_charges (hold_id, budget, unit, held, spent, created_us)"
        " VALUES (1, 'budget:per-session@session:s1', 'sat', 0, 50, 1)",
        "INSERT INTO ledger_call_events (at_us, tool, decision, hold_id, spent, spent_unit)"
        " VALUES (1, 'l402-fetch', 'allow', 1, 50, 'sat')",
    ]
    for at, (rule, reason, _, _) in enumerate(V5_DENIALS, start=2):
        quoted = reason.replace("'", "''")
        statements.append(
            "INSERT INTO ledger_call_events (at_us, tool, decision, rule, reason)"
            f" VALUES ({at}, 'l402-fetch', 'deny', '{rule}', '{quoted}')"
        )
    for at, (source, key, amount, unit, _) in enumerate(V5_OBSERVATIONS, start=100):
        statements.append(
            "INSERT INTO ledger_observations (source, key, amount, unit, seen_us)"
            f" VALUES ('{source}', '{key}', {amount}, '{unit}', {at})"
        )
    return statements


def check_v5_rows(ledger: Ledger) -> None:
    allowed, *denied = (recorded.call for recorded in ledger.calls(last=100))
    assert (allowed.decision, allowed.kind, allowed.balance_key, allowed.spent) == (
        "allow",
        None,
        None,
        Amount(50, SAT),
    )
    assert [(c.rule, c.reason, c.kind, c.balance_key) for c in denied] == V5_DENIALS
    money = {observation.key: observation.money for observation, _ in ledger.observed()}
    assert money == {key: is_money for _, key, _, _, is_money in V5_OBSERVATIONS}
    hold = ledger.hold(1)
    assert (hold.phase, hold.over_reservation, hold.priced_by) == ("settled", Amount(40, SAT), "quote")
    assert ledger.usage(SESSION).spent == 50
    with pytest.raises(AlreadyPaid):
        ledger.reserve([SESSION], Amount(1, SAT), idempotency_key="h1")


def test_a_version_5_ledger_file_opens_with_the_facts_of_its_call_events_and_observations(
    tmp_path: Path, clock: FakeClock
) -> None:
    path = tmp_path / "v5.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((FIXTURES / "ledger_v5.sqlite.sql").read_text())
        conn.execute("INSERT INTO ledger_meta VALUES ('schema_version', '5')")
        run_sql(conn, v5_rows())
    conn.close()
    with Ledger.open(path, clock=clock) as ledger:
        check_v5_rows(ledger)
        check_freezes_honoured(ledger)
    url = f"sqlite:///{path}"
    assert query(url, "SELECT value FROM ledger_meta WHERE key = 'schema_version'")[0][0] == str(SCHEMA_VERSION) == "9"


def test_a_version_5_ledger_on_either_database_is_upgraded_in_place(database_url: str, clock: FakeClock) -> None:
    engine = create_engine(database_url)
    with engine.begin() as conn:
        released(conn, 5)
        conn.execute(text("INSERT INTO ledger_meta (key, value) VALUES ('schema_version', '5')"))
        run_sql(conn.connection.driver_connection, v5_rows())
    engine.dispose()
    with Ledger.open(database_url, clock=clock) as ledger:
        check_v5_rows(ledger)
    # Opening again migrates nothing twice.
    with Ledger.open(database_url, clock=clock) as ledger:
        check_v5_rows(ledger)


def test_a_version_7_ledger_on_either_database_is_upgraded_and_honours_freezes(
    database_url: str, clock: FakeClock
) -> None:
    engine = create_engine(database_url)
    with engine.begin() as conn:
        released(conn, 7)
        conn.execute(text("INSERT INTO ledger_meta (key, value) VALUES ('schema_version', '7')"))
    engine.dispose()
    with Ledger.open(database_url, clock=clock) as ledger:
        check_freezes_honoured(ledger)
    assert query(database_url, "SELECT value FROM ledger_meta WHERE key = 'schema_version'")[0][0] == "9"


def test_the_report_of_an_upgraded_ledger_reads_the_moved_facts(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "v5.db"
    with sqlite3.connect(path) as conn:
        conn.executescript((FIXTURES / "ledger_v5.sqlite.sql").read_text())
        conn.execute("INSERT INTO ledger_meta VALUES ('schema_version', '5')")
        run_sql(conn, v5_rows())
    conn.close()
    with Ledger.open(path, clock=clock) as ledger:
        report = ledger.report(datetime.fromtimestamp(0, UTC), clock.now())
    assert [(d.rule, d.count) for d in report.rate_limit_hits] == [
        ("tools.*.quotas[1]", 1),
        ("tools.l402-fetch.rate_limit", 1),
    ]
    assert [(s.tool, s.balance, s.count) for s in report.stale_denials] == [("l402-fetch", "wallet:alby", 1)]
    assert [(d.key, d.first, d.observations) for d in report.drift] == [
        ("p402:sess_1", 2_000_000, 1),
        ("wallet:alby", 5_000_000, 1),
    ]


# --- version 9: call events may keep their arguments, redacted (`audit: {arguments: redacted}`) ---------------


def test_a_version_8_ledger_on_either_database_keeps_its_call_events_and_then_their_arguments(
    database_url: str, clock: FakeClock
) -> None:
    engine = create_engine(database_url)
    with engine.begin() as conn:
        released(conn, 8)
        conn.execute(text("INSERT INTO ledger_meta (key, value) VALUES ('schema_version', '8')"))
        conn.execute(
            text(
                "INSERT INTO ledger_call_events (at_us, session, tool, decision, rule, kind)"
                " VALUES (:t, 's1', 'l402-fetch', 'deny', 'default', 'default')"
            ),
            {"t": to_us(clock.now())},
        )
    engine.dispose()
    with Ledger.open(database_url, clock=clock) as ledger:
        [old] = ledger.calls()
        assert (old.call.tool, old.call.kind, old.call.arguments) == ("l402-fetch", "default", None)
        ledger.record(CallRecord("search", "allow", "s1", arguments='{"q": "paris"}'))
        assert [e.call.arguments for e in ledger.calls()] == [None, '{"q": "paris"}']
    assert query(database_url, "SELECT value FROM ledger_meta WHERE key = 'schema_version'")[0][0] == "9"
