"""A paying call's two durable writes: `reserve(forwarded=True)` checks, reserves, uses the approval up and
marks the hold forwarded in one transaction; `conclude` writes all its answer decided (the payment's name,
the hold's step, observations, quotes, the call event) in another. Each is one write or none: a refusal
writes nothing. A process killed after either leaves what recovery expects: a hold born forwarded is in
doubt (never voided), a concluded one settled with its event. On a real SQLite file and a real PostgreSQL
server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from sqlalchemy import Connection

from ledgers import (
    Amount,
    ApprovalError,
    BalanceObservation,
    Budget,
    BudgetExceeded,
    CallRecord,
    HoldStateError,
    Ledger,
    NamedQuote,
    PaymentInFlight,
    RateLimit,
    RateLimited,
    Window,
)
from tests.ledgers.conftest import FakeClock
from tests.ledgers.crash_worker import crash_budget
from tests.ledgers.helpers import Child, query

SAT = "sat"
SESSION = Budget("per-session", Amount(100, SAT), scope="session:s1")
DAILY = Budget("daily", Amount(1000, SAT), window=Window.calendar("day"))
RATE = RateLimit("calls:buy/1m@session:s1", 2, Window.sliding("1m"))
CREDITS = BalanceObservation("l402-fetch", "credits:https://shop.example", Amount(16, "credits:https://shop.example"))
EVENT = CallRecord(tool="buy", decision="allow", session="s1")


@pytest.fixture
def writes(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the ledger's write transactions (each one durable commit), as they begin."""
    begun: list[int] = []
    write = ledger._store.write

    def counted(*args: Any, **kwargs: Any) -> AbstractContextManager[Connection]:
        begun.append(1)
        return write(*args, **kwargs)

    monkeypatch.setattr(ledger._store, "write", counted)
    return begun


def count(ledger_url: str, table: str) -> int:
    return int(query(ledger_url, f"SELECT COUNT(*) FROM {table}")[0][0])


# --- before forwarding: one write ------------------------------------------------------------------------------


def test_a_paying_calls_hold_is_born_forwarded_in_the_one_write_that_checks_and_reserves_it(
    ledger: Ledger, writes: list[int], ledger_url: str
) -> None:
    hold = ledger.reserve([SESSION, DAILY], Amount(30, SAT), rate_limits=[RATE], idempotency_key="p1", forwarded=True)
    assert len(writes) == 1
    assert ledger.hold(hold).phase == "forwarded"
    assert (ledger.usage(SESSION).held, ledger.usage(DAILY).held) == (30, 30)
    assert count(ledger_url, "ledger_rate_events") == 1
    # Forwarded already: marking it again is a step its phase does not allow.
    with pytest.raises(HoldStateError):
        ledger.mark_forwarded(hold)


def test_a_refused_paying_call_writes_nothing_neither_hold_nor_rate_count(ledger: Ledger, ledger_url: str) -> None:
    ledger.reserve([SESSION], Amount(90, SAT), rate_limits=[RATE], forwarded=True)
    with pytest.raises(BudgetExceeded):
        ledger.reserve([SESSION], Amount(20, SAT), rate_limits=[RATE], forwarded=True)
    ledger.reserve([SESSION], Amount(1, SAT), rate_limits=[RATE], forwarded=True)
    with pytest.raises(RateLimited):
        ledger.reserve([SESSION], Amount(1, SAT), rate_limits=[RATE], forwarded=True)
    assert (count(ledger_url, "ledger_holds"), count(ledger_url, "ledger_rate_events")) == (2, 2)
    assert ledger.usage(SESSION).held == 91


def test_a_shadowed_reservation_is_born_forwarded_too(ledger: Ledger) -> None:
    reserved = ledger.reserve_shadowed([SESSION], Amount(150, SAT), shadow={SESSION.key}, forwarded=True)
    assert ledger.hold(reserved.hold).phase == "forwarded"
    assert isinstance(reserved.would_refuse, BudgetExceeded)


def test_the_approval_is_used_up_in_the_reservations_write_and_a_used_one_refuses_it(
    ledger: Ledger, writes: list[int], ledger_url: str
) -> None:
    asked = ledger.request_approval("session:s1", "buy", "d1", identity=None, expire_after_s=60)
    ledger.decide_approval(asked.id, approve=True)
    writes.clear()
    hold = ledger.reserve([SESSION], Amount(5, SAT), forwarded=True, approval=asked.id)
    assert len(writes) == 1
    assert ledger.hold(hold).phase == "forwarded"
    assert [a.state for a in ledger.approvals()] == ["used"]
    with pytest.raises(ApprovalError):  # single-use: another call under it reserves nothing
        ledger.reserve([SESSION], Amount(5, SAT), forwarded=True, approval=asked.id)
    assert count(ledger_url, "ledger_holds") == 1


def test_an_approval_not_yet_approved_refuses_the_reservation_and_stays_pending(ledger: Ledger) -> None:
    asked = ledger.request_approval("session:s1", "buy", "d1", identity=None, expire_after_s=60)
    with pytest.raises(ApprovalError):
        ledger.reserve([SESSION], Amount(5, SAT), forwarded=True, approval=asked.id)
    assert ledger.open_holds() == [] and [a.state for a in ledger.approvals()] == ["pending"]


# --- after the answer: one write ---------------------------------------------------------------------------------


def test_the_answer_settles_names_observes_quotes_and_records_in_one_write(
    ledger: Ledger, writes: list[int], clock: FakeClock
) -> None:
    hold = ledger.reserve([SESSION], Amount(30, SAT), forwarded=True)
    writes.clear()
    quote = NamedQuote("payment:abc", Amount(21, SAT), payment_id="abc", keep_higher=True)
    event = CallRecord(tool="buy", decision="allow", session="s1", hold_id=hold, spent=Amount(21, SAT))
    named = ledger.conclude(
        hold, "settle", Amount(21, SAT), payment_id="abc", observations=[CREDITS], quotes=[quote], event=event
    )
    assert named is True and len(writes) == 1
    settled = ledger.hold(hold)
    assert (settled.phase, settled.settled, settled.idempotency_key) == ("settled", Amount(21, SAT), "abc")
    assert (ledger.usage(SESSION).held, ledger.usage(SESSION).spent) == (0, 21)
    latest = ledger.latest(CREDITS.key)
    assert latest is not None and latest[0].amount == CREDITS.amount
    stored = ledger.quote("payment:abc")
    assert stored is not None and stored.amount == Amount(21, SAT)
    assert [(c.call.tool, c.call.hold_id, c.call.spent) for c in ledger.calls()] == [("buy", hold, Amount(21, SAT))]


def test_an_answer_above_the_reservation_is_counted_whole(ledger: Ledger) -> None:
    hold = ledger.reserve([SESSION], Amount(30, SAT), forwarded=True)
    ledger.conclude(hold, "settle", Amount(45, SAT), event=EVENT)
    assert ledger.usage(SESSION).spent == 45


@pytest.mark.parametrize(("step", "phase"), [("void", "voided"), ("mark_in_doubt", "in_doubt")])
def test_an_answer_voids_or_keeps_in_doubt_with_its_event(ledger: Ledger, step: Any, phase: str) -> None:
    hold = ledger.reserve([SESSION], Amount(30, SAT), forwarded=True)
    ledger.conclude(hold, step, event=EVENT)
    assert ledger.hold(hold).phase == phase
    assert ledger.usage(SESSION).held == (30 if phase == "in_doubt" else 0)
    assert len(ledger.calls()) == 1


def test_a_step_the_holds_phase_does_not_allow_writes_nothing_of_the_answer(ledger: Ledger, ledger_url: str) -> None:
    hold = ledger.reserve([SESSION], Amount(30, SAT), forwarded=True)
    ledger.mark_in_doubt(hold)  # say, recovered by another guard meanwhile
    with pytest.raises(HoldStateError):
        ledger.conclude(hold, "settle", Amount(30, SAT), observations=[CREDITS], event=EVENT)
    assert ledger.hold(hold).phase == "in_doubt"
    assert (count(ledger_url, "ledger_observations"), count(ledger_url, "ledger_call_events")) == (0, 0)


def test_a_payment_another_hold_has_is_not_named_but_the_rest_is_written(ledger: Ledger) -> None:
    first = ledger.reserve([SESSION], Amount(10, SAT), idempotency_key="abc", forwarded=True)
    second = ledger.reserve([SESSION], Amount(10, SAT), forwarded=True)
    assert ledger.conclude(second, "settle", Amount(10, SAT), payment_id="abc", event=EVENT) is False
    assert ledger.hold(second).phase == "settled" and ledger.hold(second).idempotency_key is None
    assert ledger.hold(first).idempotency_key == "abc"
    assert len(ledger.calls()) == 1
    with pytest.raises(PaymentInFlight):
        ledger.reserve([SESSION], Amount(1, SAT), idempotency_key="abc")


def test_of_two_prices_named_for_one_invoice_the_higher_stays(ledger: Ledger) -> None:
    for sats in (21, 5, 40):
        ledger.conclude(None, quotes=[NamedQuote("payment:abc", Amount(sats, SAT), keep_higher=True)])
    ledger.conclude(None, quotes=[NamedQuote("https://shop.example/a", Amount(40, SAT))])
    ledger.conclude(None, quotes=[NamedQuote("https://shop.example/a", Amount(5, SAT))])
    by_hash, by_url = ledger.quote("payment:abc"), ledger.quote("https://shop.example/a")
    assert by_hash is not None and by_hash.amount == Amount(40, SAT)
    assert by_url is not None and by_url.amount == Amount(5, SAT)  # a URL's price may change: the latest wins


# --- a process killed after each write ---------------------------------------------------------------------------


class Guard(Child):
    """A crash_worker process: one ledger step per command, each answered once it is durable."""

    def __init__(self, url: str) -> None:
        super().__init__("tests.ledgers.crash_worker", url, "100")
        assert self.line().split()[0] == "open"

    def step(self, command: str, answer: str) -> int:
        word, hold_id = self.ask(command).split()
        assert word == answer
        return int(hold_id)


@pytest.fixture
def start_guard(ledger_url: str) -> Iterator[Callable[[], Guard]]:
    guards: list[Guard] = []

    def start() -> Guard:
        guards.append(Guard(ledger_url))
        return guards[-1]

    yield start
    for guard in guards:
        guard.close()


def test_a_hold_born_forwarded_by_a_killed_process_is_in_doubt_never_voided(
    ledger_url: str, start_guard: Callable[[], Guard]
) -> None:
    """Killed after the first write: the request may or may not have reached the upstream. As after a
    separate mark_forwarded, the payment may have left, so the hold stays counted, in doubt."""
    guard = start_guard()
    hold_id = guard.step("pay 60 p1", "forwarded")
    guard.kill()
    with Ledger.open(ledger_url) as ledger:
        assert ledger.hold(hold_id).phase == "in_doubt"
        assert ledger.usage(crash_budget(100)).held == 60
        with pytest.raises(PaymentInFlight):
            ledger.reserve([crash_budget(100)], Amount(1, SAT), idempotency_key="p1")


def test_a_hold_concluded_before_the_process_was_killed_is_settled_with_its_event_and_observation(
    ledger_url: str, start_guard: Callable[[], Guard]
) -> None:
    guard = start_guard()
    hold_id = guard.step("pay 60 p1", "forwarded")
    guard.step(f"conclude {hold_id} 21", "concluded")
    guard.kill()
    with Ledger.open(ledger_url) as ledger:
        hold = ledger.hold(hold_id)
        assert (hold.phase, hold.settled) == ("settled", Amount(21, SAT))
        assert [(c.call.hold_id, c.call.spent) for c in ledger.calls()] == [(hold_id, Amount(21, SAT))]
        assert ledger.latest("credits:crash") is not None
