"""A guard-like process for the crash tests: it takes one protocol step per command, so the test can
kill it (SIGKILL) between any two.

    python -m tests.ledgers.crash_worker URL LIMIT

It opens the ledger and prints "open OWNER". Then, for each line on stdin, it takes the step and
prints its answer once the step is durable (committed), and blocks reading the next line:

    reserve AMOUNT KEY   ->  reserved ID      (AMOUNT sat against the budget `crash_budget(LIMIT)`)
    forward ID           ->  forwarded ID
    pay AMOUNT KEY       ->  forwarded ID     (reserved and forwarded in one transaction: a paying call's first)
    conclude ID AMOUNT   ->  concluded ID     (settled with an observation and its event: a paying call's second)
    settle ID AMOUNT     ->  settled ID
    doubt ID             ->  in_doubt ID
    close                ->  closed           (closes the ledger and exits)
"""

from __future__ import annotations

import sys

from ledgers import Amount, BalanceObservation, Budget, CallRecord, Ledger


def crash_budget(limit: int) -> Budget:
    return Budget("crash", Amount(limit, "sat"))


def main() -> None:
    url, limit = sys.argv[1], int(sys.argv[2])
    budget = crash_budget(limit)
    ledger = Ledger.open(url)
    print(f"open {ledger.owner}", flush=True)
    for line in sys.stdin:
        command, *args = line.split()
        if command == "reserve":
            hold_id = ledger.reserve([budget], Amount(int(args[0]), "sat"), idempotency_key=args[1])
            answer = f"reserved {hold_id}"
        elif command == "pay":
            hold_id = ledger.reserve([budget], Amount(int(args[0]), "sat"), idempotency_key=args[1], forwarded=True)
            answer = f"forwarded {hold_id}"
        elif command == "conclude":
            hold_id, paid = int(args[0]), Amount(int(args[1]), "sat")
            ledger.conclude(
                hold_id,
                "settle",
                paid,
                observations=[BalanceObservation("crash", "credits:crash", Amount(7, "credits:crash"))],
                event=CallRecord(tool="crash", decision="allow", hold_id=hold_id, spent=paid),
            )
            answer = f"concluded {hold_id}"
        elif command == "forward":
            ledger.mark_forwarded(int(args[0]))
            answer = f"forwarded {args[0]}"
        elif command == "settle":
            ledger.settle(int(args[0]), Amount(int(args[1]), "sat"))
            answer = f"settled {args[0]}"
        elif command == "doubt":
            ledger.mark_in_doubt(int(args[0]))
            answer = f"in_doubt {args[0]}"
        elif command == "close":
            ledger.close()
            print("closed", flush=True)
            return
        else:
            raise SystemExit(f"crash_worker: unknown command {line!r}")
        print(answer, flush=True)


if __name__ == "__main__":
    main()
