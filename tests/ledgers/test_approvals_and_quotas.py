"""Schema v2 of the ledger: single-use approvals, weighted counters (quotas), the audit trail's pages,
and a first-release ledger upgraded in place. Each on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from ledgers import (
    SCHEMA_VERSION,
    Amount,
    Approval,
    ApprovalError,
    Budget,
    CallRecord,
    Ledger,
    RateLimit,
    RateLimited,
    Window,
)
from ledgers._schema import MIGRATIONS
from ledgers._time import to_us
from tests.ledgers.conftest import FakeClock
from tests.ledgers.helpers import query

SUBJECT = "session:s1"
DIGEST = "a" * 64
HOUR_S = 3600.0


@pytest.fixture
def ledger(ledger_url: str, clock: FakeClock) -> Iterator[Ledger]:
    with Ledger.open(ledger_url, clock=clock) as opened:
        yield opened


def ask(ledger: Ledger, digest: str = DIGEST, action: str = "l402-pay", subject: str = SUBJECT) -> Approval:
    return ledger.request_approval(subject, action, digest, identity="alice", expire_after_s=HOUR_S)


# --- approvals ------------------------------------------------------------------------------------------


def test_an_approval_request_waits_pending_and_asking_again_returns_the_same_one(ledger: Ledger) -> None:
    first = ask(ledger)
    assert (first.state, first.subject, first.action, first.digest, first.identity) == (
        "pending",
        SUBJECT,
        "l402-pay",
        DIGEST,
        "alice",
    )
    assert first.id.startswith("ap_") and not first.expired and first.decided is None
    assert (first.expires - first.created).total_seconds() == HOUR_S
    assert ask(ledger).id == first.id
    assert [a.id for a in ledger.approvals("pending")] == [first.id]


@pytest.mark.parametrize(
    ("other", "why"),
    [
        ({"digest": "b" * 64}, "other arguments"),
        ({"action": "l402-fetch"}, "another tool"),
        ({"subject": "session:s2"}, "another session"),
    ],
    ids=["digest", "action", "subject"],
)
def test_a_different_action_needs_its_own_approval(ledger: Ledger, other: dict[str, str], why: str) -> None:
    first = ask(ledger)
    second = ask(ledger, **other)
    assert second.id != first.id, why
    assert second.state == "pending"
    assert {a.id for a in ledger.approvals("pending")} == {first.id, second.id}


def test_an_approved_action_is_used_once_only(ledger: Ledger) -> None:
    pending = ask(ledger)
    approved = ledger.decide_approval(pending.id, approve=True)
    assert (approved.id, approved.state) == (pending.id, "approved")
    assert approved.decided is not None
    assert ask(ledger).state == "approved"  # the agent's retry finds it
    ledger.use_approval(pending.id)
    with pytest.raises(ApprovalError, match="is not approved, was used already, or expired"):
        ledger.use_approval(pending.id)
    again = ask(ledger)
    assert (again.state, again.id != pending.id) == ("pending", True)
    assert [a.id for a in ledger.approvals("used")] == [pending.id]


def test_a_denied_action_stays_denied_when_asked_again(ledger: Ledger) -> None:
    pending = ask(ledger)
    denied = ledger.decide_approval(pending.id, approve=False)
    assert denied.state == "denied"
    assert ask(ledger).id == pending.id and ask(ledger).state == "denied"
    with pytest.raises(ApprovalError):
        ledger.use_approval(pending.id)


@pytest.mark.parametrize(("first", "second"), [(True, True), (True, False), (False, True), (False, False)])
def test_an_approval_is_decided_once(ledger: Ledger, first: bool, second: bool) -> None:
    pending = ask(ledger)
    ledger.decide_approval(pending.id, approve=first)
    with pytest.raises(ApprovalError, match=f"is already {'approved' if first else 'denied'}"):
        ledger.decide_approval(pending.id, approve=second)


def test_a_used_approval_cannot_be_decided_again(ledger: Ledger) -> None:
    pending = ask(ledger)
    ledger.decide_approval(pending.id, approve=True)
    ledger.use_approval(pending.id)
    with pytest.raises(ApprovalError, match="is already used"):
        ledger.decide_approval(pending.id, approve=True)


def test_an_unknown_approval_cannot_be_decided_or_used(ledger: Ledger) -> None:
    with pytest.raises(ApprovalError, match="no approval ap_nope"):
        ledger.decide_approval("ap_nope", approve=True)
    with pytest.raises(ApprovalError):
        ledger.use_approval("ap_nope")


def test_a_pending_approval_that_expired_cannot_be_approved_and_a_new_request_starts_over(
    ledger: Ledger, clock: FakeClock
) -> None:
    pending = ask(ledger)
    clock.advance(HOUR_S)
    with pytest.raises(ApprovalError, match="expired at"):
        ledger.decide_approval(pending.id, approve=True)
    assert ledger.approvals("pending") == []
    (listed,) = ledger.approvals("pending", include_expired=True)
    assert (listed.id, listed.expired) == (pending.id, True)
    fresh = ask(ledger)
    assert (fresh.state, fresh.id != pending.id, fresh.expired) == ("pending", True, False)


def test_an_approved_approval_that_expired_cannot_be_used(ledger: Ledger, clock: FakeClock) -> None:
    pending = ask(ledger)
    clock.advance(HOUR_S - 1)
    approved = ledger.decide_approval(pending.id, approve=True)
    # An approval lasts as long as it was given to be decided, counted from the decision.
    assert (approved.expires - approved.decided).total_seconds() == HOUR_S  # type: ignore[operator]
    clock.advance(HOUR_S - 1)
    assert ask(ledger).id == pending.id  # still live
    clock.advance(1)
    with pytest.raises(ApprovalError):
        ledger.use_approval(pending.id)
    fresh = ask(ledger)
    assert (fresh.state, fresh.id != pending.id) == ("pending", True)


def test_an_approval_can_be_given_its_own_lifetime(ledger: Ledger, clock: FakeClock) -> None:
    pending = ask(ledger)
    ledger.decide_approval(pending.id, approve=True, expire_after_s=60)
    clock.advance(61)
    with pytest.raises(ApprovalError):
        ledger.use_approval(pending.id)


def test_approvals_survive_reopening_the_ledger(ledger_url: str, clock: FakeClock) -> None:
    with Ledger.open(ledger_url, clock=clock) as ledger:
        pending = ask(ledger)
        ledger.decide_approval(pending.id, approve=True)
    with Ledger.open(ledger_url, clock=clock) as ledger:
        assert ask(ledger).state == "approved"
        ledger.use_approval(pending.id)
    with Ledger.open(ledger_url, clock=clock) as ledger:
        with pytest.raises(ApprovalError):
            ledger.use_approval(pending.id)


def test_approvals_are_listed_newest_first(ledger: Ledger, clock: FakeClock) -> None:
    first = ask(ledger, digest="1" * 64)
    clock.advance(1)
    second = ask(ledger, digest="2" * 64)
    ledger.decide_approval(first.id, approve=False)
    assert [a.id for a in ledger.approvals()] == [second.id, first.id]
    assert [a.id for a in ledger.approvals("denied")] == [first.id]


# --- weighted counters ----------------------------------------------------------------------------------


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


# --- the audit trail's pages ----------------------------------------------------------------------------


def test_calls_returns_the_last_n_oldest_first_and_pages_forward_after_an_id(ledger: Ledger) -> None:
    ids = [ledger.record(CallRecord(f"tool-{n}", "allow", session="s1")) for n in range(7)]
    last3 = ledger.calls(last=3)
    assert [c.id for c in last3] == ids[-3:]
    assert [c.call.tool for c in last3] == ["tool-4", "tool-5", "tool-6"]
    assert [c.id for c in ledger.calls(last=100)] == ids
    assert [c.id for c in ledger.calls(last=2, after_id=ids[1])] == ids[2:4]
    assert [c.id for c in ledger.calls(last=100, after_id=ids[4])] == ids[5:]
    assert ledger.calls(last=10, after_id=ids[-1]) == []


def test_a_recorded_call_reads_back_as_written(ledger: Ledger, clock: FakeClock) -> None:
    record = CallRecord(
        "l402-pay",
        "allow",
        session="s1",
        identity="alice",
        rule="tools.l402-pay",
        reason="approved",
        price=Amount(100, "sat"),
        hold_id=7,
        spent=Amount(90, "sat"),
        latency_us=1234,
        args_digest=DIGEST,
    )
    call_id = ledger.record(record)
    (found,) = ledger.calls(last=1)
    assert (found.id, found.at, found.call) == (call_id, clock.now(), record)


# --- a first-release ledger -----------------------------------------------------------------------------


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
    assert SCHEMA_VERSION == 5
    assert sorted(row[0] for row in query(url, "SELECT weight FROM ledger_rate_events")) == [1, 1, 1, 7]
    assert [row[0] for row in query(url, "SELECT state FROM ledger_approvals")] == ["used"]


def test_a_version_1_ledger_on_either_database_is_upgraded_in_place(ledger_url: str, clock: FakeClock) -> None:
    engine = create_engine(ledger_url)
    with engine.begin() as conn:
        MIGRATIONS[0](conn)  # the first release's schema, as it created it
        conn.execute(text("INSERT INTO ledger_meta (key, value) VALUES ('schema_version', '1')"))
        conn.execute(
            text("INSERT INTO ledger_rate_events (key, at_us) VALUES ('counter:sats/1h@global', :t)"),
            [{"t": to_us(clock.now()) - n * 1_000_000} for n in (1, 2)],
        )
    engine.dispose()
    with Ledger.open(ledger_url, clock=clock) as ledger:
        assert ledger.count("counter:sats/1h@global", Window.sliding("1h")) == 2
        ledger.hit([quota(8)])
        with pytest.raises(RateLimited):
            ledger.hit([quota(1)])
        approval = ask(ledger)
        assert ledger.decide_approval(approval.id, approve=False).state == "denied"
    assert query(ledger_url, "SELECT value FROM ledger_meta WHERE key = 'schema_version'")[0][0] == str(SCHEMA_VERSION)
    # Opening again migrates nothing twice.
    with Ledger.open(ledger_url, clock=clock) as ledger:
        assert ledger.count("counter:sats/1h@global", Window.sliding("1h")) == 10
