"""Workers released together against one budget, as threads and as separate processes, each with a
ledger of its own: the budget is never overspent, no reservation is lost, storage never fails under
contention (a refusal is an answer, not a failure), and one payment is never reserved twice."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import TypeVar

from ledgers import Amount, Budget, Ledger, PaymentInFlight
from tests.conftest import WAIT_S
from tests.ledgers.cycle_worker import PRICE, Report, run_cycles, shared_budget
from tests.ledgers.helpers import Child, query

# Small limits: the workers want several times more than the budget allows, so refusals happen and
# most reservations are decided at the edge of the limit.
THREADS, THREAD_CYCLES, THREAD_LIMIT = 32, 12, 600
PROCESSES, PROCESS_CYCLES, PROCESS_LIMIT = 8, 40, 500
OPEN_PHASES = ("reserved", "forwarded", "in_doubt")

T = TypeVar("T")


def in_threads(count: int, target: Callable[[int], T]) -> list[T]:
    """`target(0)` … `target(count - 1)`, each in a thread of its own; their results, or the first
    exception one raised. Fails if they are not all done within WAIT_S."""
    results: dict[int, T] = {}
    failures: list[BaseException] = []

    def run(index: int) -> None:
        try:
            results[index] = target(index)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + WAIT_S
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), f"threads still running after {WAIT_S}s"
    if failures:
        raise failures[0]
    return [results[i] for i in range(count)]


@contextmanager
def watching(ledger: Ledger, budget: Budget) -> Iterator[list[tuple[int, int]]]:
    """Read the budget's (spent, held) over and over while the block runs; every reading is kept."""
    readings: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def watch() -> None:
        try:
            while True:
                usage = ledger.usage(budget)
                readings.append((usage.spent, usage.held))
                if done.wait(0.005):  # pace the readings; returns at once when the block ends
                    return
        except BaseException as exc:
            errors.append(exc)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield readings
    finally:
        done.set()
        watcher.join(WAIT_S)
    assert not watcher.is_alive(), "the usage watcher did not stop"
    assert errors == [], f"reading the budget's usage failed: {errors}"


def assert_budget_kept(
    url: str, ledger: Ledger, budget: Budget, reports: Sequence[Report], readings: list[tuple[int, int]]
) -> None:
    limit = budget.limit.value
    assert [e for r in reports for e in r.errors] == [], "a worker got an error that is not a refusal"
    outcomes = {o.hold_id: o for r in reports for o in r.holds}
    assert len(outcomes) == sum(len(r.holds) for r in reports), "one hold id was handed to two reservations"
    assert sum(r.refusals for r in reports) > 0, "the budget was never contended: make it smaller"
    assert outcomes, "no reservation succeeded"

    # The ledger holds exactly the reservations the workers were told succeeded, in the phases
    # they left them in: none lost, none extra, none changed behind their backs.
    rows = query(url, "SELECT id, phase, amount, settled FROM ledger_holds")
    assert sorted(row.id for row in rows) == sorted(outcomes)
    assert {row.id: (row.phase, row.amount, row.settled) for row in rows} == {
        o.hold_id: (o.phase, PRICE, o.settled) for o in outcomes.values()
    }
    charges = query(url, "SELECT hold_id FROM ledger_charges")
    assert sorted(c.hold_id for c in charges) == sorted(outcomes)

    spent = sum(o.settled or 0 for o in outcomes.values())
    held = PRICE * sum(o.phase in OPEN_PHASES for o in outcomes.values())
    usage = ledger.usage(budget)
    assert (usage.spent, usage.held) == (spent, held)
    # Admitted = settled + in doubt + still open: never more than the limit, at the end or at any
    # moment the watcher looked.
    assert spent + held <= limit
    assert readings, "the watcher never read the budget"
    assert max(s + h for s, h in readings) <= limit


def test_32_threads_released_together_never_overspend_one_budget_nor_lose_a_reservation(ledger_url: str) -> None:
    budget = shared_budget(THREAD_LIMIT)
    barrier = threading.Barrier(THREADS, timeout=WAIT_S)

    def release() -> None:
        barrier.wait()

    def worker(index: int) -> Report:
        try:
            return run_cycles(ledger_url, index, THREAD_CYCLES, THREAD_LIMIT, release)
        except BaseException:
            barrier.abort()  # the others fail at once rather than wait for a worker that will not come
            raise

    # The test's own ledger creates the schema before the workers open theirs.
    with Ledger.open(ledger_url) as ledger:
        with watching(ledger, budget) as readings:
            reports = in_threads(THREADS, worker)
        assert_budget_kept(ledger_url, ledger, budget, reports, readings)


def test_8_processes_released_together_never_overspend_one_budget_nor_lose_a_reservation(ledger_url: str) -> None:
    budget = shared_budget(PROCESS_LIMIT)
    with Ledger.open(ledger_url) as ledger, ExitStack() as stack:
        # Every worker reads the same pipe as its stdin and starts when it reaches end of file:
        # closing the one write end releases them all at once.
        release_read, release_write = os.pipe()
        release = stack.enter_context(os.fdopen(release_write, "w"))
        children: list[Child] = []
        try:
            for index in range(PROCESSES):
                args = (ledger_url, str(index), str(PROCESS_CYCLES), str(PROCESS_LIMIT))
                child = Child("tests.ledgers.cycle_worker", *args, stdin=release_read)
                stack.callback(child.close)
                children.append(child)
        finally:
            os.close(release_read)
        for child in children:
            assert child.line() == "ready"
        with watching(ledger, budget) as readings:
            release.close()
            reports = [Report.from_json(child.line()) for child in children]
            for child in children:
                assert child.wait() == 0, child.stderr
        assert_budget_kept(ledger_url, ledger, budget, reports, readings)


def test_two_concurrent_reservations_with_the_same_idempotency_key_never_both_succeed(ledger_url: str) -> None:
    rounds = 60
    barrier = threading.Barrier(2, timeout=WAIT_S)
    results: list[list[str]] = [[] for _ in range(rounds)]
    with Ledger.open(ledger_url) as first, Ledger.open(ledger_url) as second:
        ledgers = (first, second)

        def racer(side: int) -> None:
            # Each side spends from a budget of its own: nothing but the payment's key stands
            # between the two reservations.
            budget = Budget(f"session-{side}", Amount(10**9, "sat"), scope=f"session:{side}")
            for index in range(rounds):
                barrier.wait()
                try:
                    ledgers[side].reserve([budget], Amount(PRICE, "sat"), idempotency_key=f"payment-{index}")
                    results[index].append("reserved")
                except PaymentInFlight:
                    results[index].append("in flight")
                except BaseException:
                    barrier.abort()
                    raise

        in_threads(2, racer)

    # Every round: exactly one reservation, and the other told the payment is in flight.
    assert [sorted(r) for r in results] == [["in flight", "reserved"]] * rounds
    keys = query(ledger_url, "SELECT idempotency_key, COUNT(*) AS n FROM ledger_holds GROUP BY idempotency_key")
    assert sorted((k.idempotency_key, k.n) for k in keys) == sorted((f"payment-{i}", 1) for i in range(rounds))


def test_ledgers_opened_at_once_on_an_empty_database_all_open(database_url: str) -> None:
    # Guards sharing one PostgreSQL ledger may all start together against a fresh database.
    count = 8
    barrier = threading.Barrier(count, timeout=WAIT_S)

    def opener(_: int) -> str:
        barrier.wait()
        with Ledger.open(database_url) as ledger:
            return ledger.owner

    owners = in_threads(count, opener)
    assert len(set(owners)) == count
