"""A worker that hammers one budget with two-phase cycles, for the concurrency tests.

Each cycle reserves PRICE against the shared budget, then (chosen by a per-worker random sequence):
settles at most PRICE (straight away, or after marking it forwarded), voids, marks forwarded then
in doubt, or leaves the hold reserved. A refusal (`BudgetExceeded`) is counted, not an error; any
other exception is an error the test reports.

Threads call `run_cycles` directly. As a process (`python -m tests.ledgers.cycle_worker URL WORKER
CYCLES LIMIT`) it opens the ledger, prints "ready", waits until its stdin reaches end of file (the
test closes the one pipe every worker reads, releasing them all at once), runs its cycles and
prints its report as one JSON line.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ledgers import Amount, Budget, BudgetExceeded, Ledger

PRICE = 10  # sat: what one cycle reserves
# What a cycle does after its reservation, and how often.
KINDS = ("settle", "forward_settle", "void", "in_doubt", "leave_open")
WEIGHTS = (40, 15, 20, 20, 5)


def shared_budget(limit: int) -> Budget:
    return Budget("shared", Amount(limit, "sat"))


@dataclass
class Outcome:
    """One reservation that succeeded, and the phase the worker left its hold in."""

    hold_id: int
    phase: str
    settled: int | None = None


@dataclass
class Report:
    worker: int
    holds: list[Outcome] = field(default_factory=list)
    refusals: int = 0
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, line: str) -> Report:
        data: dict[str, Any] = json.loads(line)
        return cls(data["worker"], [Outcome(**h) for h in data["holds"]], data["refusals"], data["errors"])


def run_cycles(url: str, worker: int, cycles: int, limit: int, release: Callable[[], None]) -> Report:
    """Open a ledger of this worker's own, wait for `release`, run `cycles` cycles; what happened."""
    budget = shared_budget(limit)
    rng = random.Random(worker)
    report = Report(worker)
    with Ledger.open(url) as ledger:
        release()
        for _ in range(cycles):
            kind = rng.choices(KINDS, WEIGHTS)[0]
            try:
                hold_id = ledger.reserve([budget], Amount(PRICE, "sat"))
            except BudgetExceeded:
                report.refusals += 1
                continue
            except Exception as exc:
                report.errors.append(f"reserve: {type(exc).__name__}: {exc}")
                continue
            outcome = Outcome(hold_id, "reserved")
            report.holds.append(outcome)
            try:
                if kind in ("forward_settle", "in_doubt"):
                    ledger.mark_forwarded(hold_id)
                    outcome.phase = "forwarded"
                if kind in ("settle", "forward_settle"):
                    paid = rng.randint(0, PRICE)
                    ledger.settle(hold_id, Amount(paid, "sat"))
                    outcome.phase, outcome.settled = "settled", paid
                elif kind == "void":
                    ledger.void(hold_id)
                    outcome.phase = "voided"
                elif kind == "in_doubt":
                    ledger.mark_in_doubt(hold_id)
                    outcome.phase = "in_doubt"
            except Exception as exc:
                report.errors.append(f"{kind} hold {hold_id}: {type(exc).__name__}: {exc}")
    return report


def main() -> None:
    url, worker, cycles, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

    def release() -> None:
        print("ready", flush=True)
        sys.stdin.read()  # returns at end of file: when the test closes the pipe's write end

    report = run_cycles(url, worker, cycles, limit, release)
    print(json.dumps(asdict(report)), flush=True)


if __name__ == "__main__":
    main()
