"""The audit trail: call events appended in order, read back as written (their structured facts too),
paged. On a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

from ledgers import Amount, CallRecord, Ledger
from tests.ledgers.conftest import FakeClock
from tests.ledgers.helpers import query

SAT = "sat"
DIGEST = "a" * 64


def test_call_events_are_appended_for_the_audit_trail(ledger: Ledger, ledger_url: str) -> None:
    first = ledger.record(CallRecord("l402-fetch", "allow", session="s1", price=Amount(10, SAT), latency_us=900))
    second = ledger.record(CallRecord("l402-pay", "deny", rule="no-raw-invoices", reason="disabled"))
    assert second > first
    assert query(ledger_url, "SELECT COUNT(*) FROM ledger_call_events")[0][0] == 2


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


def test_the_structured_facts_of_a_denial_read_back_as_written(ledger: Ledger) -> None:
    stale = CallRecord(
        "pay_invoice",
        "deny",
        rule="balances.stale_after",
        reason="the balance is stale",
        kind="stale_balance",
        balance_key="wallet:alby",
    )
    ledger.record(stale)
    (found,) = ledger.calls(last=1)
    assert found.call == stale
    assert (found.call.decision, found.call.kind, found.call.balance_key) == ("deny", "stale_balance", "wallet:alby")


def test_several_events_written_at_once_keep_their_order(ledger: Ledger, clock: FakeClock) -> None:
    first = ledger.record(CallRecord("before", "allow"))
    events = [
        CallRecord("fetch", "deny", rule="tools.fetch.rate_limit", kind="rate_limit"),
        CallRecord("fetch", "allow", price=Amount(10, SAT), spent=Amount(10, SAT)),
        CallRecord("get_balance", "external", spent=Amount(3, SAT)),
    ]
    clock.advance(1)
    ledger.record_many(events)
    ledger.record_many([])  # nothing to write: no transaction
    written = ledger.calls(last=10, after_id=first)
    assert [c.call for c in written] == events
    assert [c.id for c in written] == sorted(c.id for c in written)
    assert {c.at for c in written} == {clock.now()}
