"""Recovery. A guard process killed (SIGKILL) at each step of a payment, then the ledger reopened:
recovery treats what it left by the rules. Never forwarded: voided, its room back. Forwarded: the money
may have left, so in doubt and counted in full. Settled and in-doubt holds stay as they were. The holds
of a process that is still alive are left alone; a guard on another host is alive while it beats
within its lease."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import create_engine, text

from ledgers import AlreadyPaid, Amount, BudgetExceeded, HoldStateError, Ledger, PaymentInFlight
from tests.ledgers.conftest import FakeClock, reset_postgres
from tests.ledgers.crash_worker import crash_budget
from tests.ledgers.helpers import Child, query

LIMIT = 100
PRICE = 60
KEY = "payment-1"
BUDGET = crash_budget(LIMIT)


class Guard(Child):
    """A crash_worker process: one ledger step per command, each answered once it is durable."""

    def __init__(self, url: str) -> None:
        super().__init__("tests.ledgers.crash_worker", url, str(LIMIT))
        word, self.owner = self.line().split()
        assert word == "open"

    def step(self, command: str, answer: str) -> int:
        """Take one step; the hold id from the worker's answer (it blocks on stdin after answering)."""
        word, hold_id = self.ask(command).split()
        assert word == answer
        return int(hold_id)

    def reserve(self, amount: int = PRICE, key: str = KEY) -> int:
        return self.step(f"reserve {amount} {key}", "reserved")


@pytest.fixture
def start_guard(ledger_url: str) -> Iterator[Callable[[], Guard]]:
    guards: list[Guard] = []

    def start() -> Guard:
        guards.append(Guard(ledger_url))
        return guards[-1]

    yield start
    for guard in guards:
        guard.close()


def usage(ledger: Ledger) -> tuple[int, int]:
    """(spent, held) of the budget, after checking they are within its limit."""
    now = ledger.usage(BUDGET)
    assert now.spent + now.held <= LIMIT
    return now.spent, now.held


def owners(url: str) -> list[str]:
    return [row.id for row in query(url, "SELECT id FROM ledger_owners")]


def assert_resolved_for_good(ledger: Ledger, hold_id: int) -> None:
    """No step moves the hold again, and none changes what the budget counts."""
    before = usage(ledger)
    steps: tuple[Callable[[], None], ...] = (
        lambda: ledger.settle(hold_id, Amount(1, "sat")),
        lambda: ledger.void(hold_id),
        lambda: ledger.resolve(hold_id, Amount(1, "sat")),
        lambda: ledger.mark_forwarded(hold_id),
        lambda: ledger.mark_in_doubt(hold_id),
    )
    for step in steps:
        with pytest.raises(HoldStateError):
            step()
    assert usage(ledger) == before


def test_a_hold_reserved_by_a_killed_process_is_voided_and_its_room_comes_back(
    ledger_url: str, start_guard: Callable[[], Guard]
) -> None:
    guard = start_guard()
    hold_id = guard.reserve()
    guard.kill()

    with Ledger.open(ledger_url) as ledger:
        assert ledger.hold(hold_id).phase == "voided"
        assert usage(ledger) == (0, 0)
        assert owners(ledger_url) == [ledger.owner]
        assert ledger.recover() == 0
        assert_resolved_for_good(ledger, hold_id)
        # The call was never sent: the whole limit is free again, and the same payment may be made.
        again = ledger.reserve([BUDGET], Amount(LIMIT, "sat"), idempotency_key=KEY)
        assert ledger.hold(again).phase == "reserved"
        assert usage(ledger) == (0, LIMIT)


def test_a_hold_forwarded_by_a_killed_process_becomes_in_doubt_and_still_counts_in_full(
    ledger_url: str, start_guard: Callable[[], Guard]
) -> None:
    guard = start_guard()
    hold_id = guard.reserve()
    guard.step(f"forward {hold_id}", "forwarded")
    guard.kill()

    with Ledger.open(ledger_url) as ledger:
        hold = ledger.hold(hold_id)
        assert (hold.phase, hold.settled) == ("in_doubt", None)
        assert usage(ledger) == (0, PRICE)
        assert owners(ledger_url) == [ledger.owner]
        assert ledger.recover() == 0
        # The payment may have left: it cannot be made again, and its room is not given back.
        with pytest.raises(PaymentInFlight):
            ledger.reserve([BUDGET], Amount(1, "sat"), idempotency_key=KEY)
        with pytest.raises(BudgetExceeded):
            ledger.reserve([BUDGET], Amount(LIMIT - PRICE + 1, "sat"))
        ledger.reserve([BUDGET], Amount(LIMIT - PRICE, "sat"))
        assert usage(ledger) == (0, LIMIT)
        assert ledger.hold(hold_id).phase == "in_doubt"


def test_a_hold_settled_before_the_process_was_killed_stays_settled(
    ledger_url: str, start_guard: Callable[[], Guard]
) -> None:
    guard = start_guard()
    hold_id = guard.reserve()
    guard.step(f"forward {hold_id}", "forwarded")
    guard.step(f"settle {hold_id} 45", "settled")
    guard.kill()

    with Ledger.open(ledger_url) as ledger:
        hold = ledger.hold(hold_id)
        assert (hold.phase, hold.settled) == ("settled", Amount(45, "sat"))
        assert usage(ledger) == (45, 0)
        assert owners(ledger_url) == [ledger.owner]
        assert_resolved_for_good(ledger, hold_id)
        with pytest.raises(AlreadyPaid):
            ledger.reserve([BUDGET], Amount(1, "sat"), idempotency_key=KEY)
        ledger.reserve([BUDGET], Amount(LIMIT - 45, "sat"))
        assert usage(ledger) == (45, LIMIT - 45)


def test_a_hold_in_doubt_when_the_process_was_killed_stays_in_doubt_and_resolves_exactly_once(
    ledger_url: str, start_guard: Callable[[], Guard]
) -> None:
    guard = start_guard()
    hold_id = guard.reserve()
    guard.step(f"forward {hold_id}", "forwarded")
    guard.step(f"doubt {hold_id}", "in_doubt")
    guard.kill()

    with Ledger.open(ledger_url) as ledger:
        assert ledger.hold(hold_id).phase == "in_doubt"
        assert usage(ledger) == (0, PRICE)
        assert owners(ledger_url) == [ledger.owner]
        with pytest.raises(PaymentInFlight):
            ledger.reserve([BUDGET], Amount(1, "sat"), idempotency_key=KEY)

        ledger.resolve(hold_id, Amount(30, "sat"))  # a receipt says 30 sat were paid

        hold = ledger.hold(hold_id)
        assert (hold.phase, hold.settled) == ("settled", Amount(30, "sat"))
        assert usage(ledger) == (30, 0)
        assert_resolved_for_good(ledger, hold_id)


def test_a_killed_process_with_holds_in_every_phase_is_recovered_hold_by_hold(
    ledger_url: str, start_guard: Callable[[], Guard]
) -> None:
    guard = start_guard()
    reserved = guard.reserve(20, "payment-reserved")
    forwarded = guard.reserve(20, "payment-forwarded")
    guard.step(f"forward {forwarded}", "forwarded")
    settled = guard.reserve(20, "payment-settled")
    guard.step(f"settle {settled} 15", "settled")
    doubted = guard.reserve(20, "payment-in-doubt")
    guard.step(f"forward {doubted}", "forwarded")
    guard.step(f"doubt {doubted}", "in_doubt")
    guard.kill()

    with Ledger.open(ledger_url) as ledger:
        phases = {hold_id: ledger.hold(hold_id).phase for hold_id in (reserved, forwarded, settled, doubted)}
        assert phases == {reserved: "voided", forwarded: "in_doubt", settled: "settled", doubted: "in_doubt"}
        assert usage(ledger) == (15, 40)
        assert owners(ledger_url) == [ledger.owner]


def test_the_holds_of_a_live_process_are_not_recovered_until_it_dies(
    ledger_url: str, start_guard: Callable[[], Guard]
) -> None:
    guard = start_guard()
    reserved = guard.reserve(30, "payment-a")
    forwarded = guard.reserve(30, "payment-b")
    guard.step(f"forward {forwarded}", "forwarded")

    # The worker is alive, blocked reading its next command, while this process opens the ledger.
    with Ledger.open(ledger_url) as ledger:
        assert ledger.hold(reserved).phase == "reserved"
        assert ledger.hold(forwarded).phase == "forwarded"
        assert ledger.recover() == 0
        assert usage(ledger) == (0, 60)
        assert sorted(owners(ledger_url)) == sorted([ledger.owner, guard.owner])

        # The holds are still the worker's to finish.
        guard.step(f"settle {reserved} 10", "settled")
        assert usage(ledger) == (10, 30)

        # Once it is dead, the same ledger recovers what it left.
        guard.kill()
        assert ledger.recover() == 1
        assert ledger.hold(reserved).phase == "settled"
        assert ledger.hold(forwarded).phase == "in_doubt"
        assert usage(ledger) == (10, 30)
        assert owners(ledger_url) == [ledger.owner]


class HookedClock:
    """The system clock, that runs `hook` (once) the next time it is read."""

    def __init__(self) -> None:
        self.hook: Callable[[], None] | None = None

    def now(self) -> datetime:
        hook, self.hook = self.hook, None
        if hook is not None:
            hook()
        return datetime.now(UTC)


def test_a_process_that_starts_while_recovery_runs_keeps_its_holds(postgres_url: str) -> None:
    # PostgreSQL only: SQLite runs recovery under its write lock, so no guard can start meanwhile.
    reset_postgres(postgres_url)
    clock = HookedClock()
    started: list[tuple[Guard, int]] = []

    def start_a_guard_that_reserves() -> None:
        guard = Guard(postgres_url)
        started.append((guard, 0))
        started[-1] = (guard, guard.reserve())

    try:
        with Ledger.open(postgres_url, clock=clock, recover=False) as ledger:
            # recover() reads the clock once it has listed the owners: a guard starts and reserves then.
            clock.hook = start_a_guard_that_reserves
            ledger.recover()
            assert started, "recover() did not read the clock"
            guard, hold_id = started[0]
            assert guard.process.poll() is None
            assert ledger.hold(hold_id).phase == "reserved"
            assert sorted(owners(postgres_url)) == sorted([ledger.owner, guard.owner])
            guard.step(f"forward {hold_id}", "forwarded")
    finally:
        for guard, _ in started:
            guard.close()


def test_a_guard_on_another_host_is_gone_after_a_lease_of_silence_and_each_heartbeat_renews_it(
    ledger_url: str, clock: FakeClock
) -> None:
    with (
        Ledger.open(ledger_url, clock=clock, lease_s=600) as elsewhere,
        Ledger.open(ledger_url, clock=clock, lease_s=600) as here,
    ):
        reserved = elsewhere.reserve([BUDGET], Amount(20, "sat"))
        forwarded = elsewhere.reserve([BUDGET], Amount(30, "sat"))
        elsewhere.mark_forwarded(forwarded)
        engine = create_engine(ledger_url)
        with engine.begin() as conn:  # its pid means nothing here: only its heartbeat tells it is alive
            conn.execute(text("UPDATE ledger_owners SET host = 'another-host' WHERE id = :id"), {"id": elsewhere.owner})
        engine.dispose()
        clock.advance(599)
        assert here.recover() == 0
        elsewhere.heartbeat()
        clock.advance(599)
        assert here.recover() == 0
        clock.advance(1)
        assert here.recover() == 2
        assert (here.hold(reserved).phase, here.hold(forwarded).phase) == ("voided", "in_doubt")
        assert usage(here) == (0, 30)
        assert owners(ledger_url) == [here.owner]
