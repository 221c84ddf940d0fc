"""Load run: many calls over HTTP through guard, paying calls against one budget mixed in; nothing may go wrong.

`guard run --listen` in front of the fake 402-mcp (bench/load_402mcp.py: tests/upstreams/fake_402mcp.py with a
state file per process), a SQLite ledger, and this policy: one global budget (`--budget`, default 1 500 sat),
`l402-fetch` paying up to 50 sat, `l402-config` allowed. `--concurrency` clients (default 50), each its own MCP
session over streamable HTTP (bench/_mcp_http.py), all open at once, take `--calls` calls (default 10 000) from
one queue: every `--pay-every`-th (default 10) an `l402-fetch` with `autoPay` of a resource priced 1-5 sat on an
origin of its own (so every admitted fetch pays: 402-mcp reuses a credential per origin), the others
`l402-config`. The paying calls ask for more than the budget (about 3 000 sat at the defaults), so the budget runs
out while fetches are in flight on many sessions at once.

Checked, each must hold (else the exit status is 1):
- errors: 0. A call's answer is the upstream's (a config; a fetch paid at its price) or guard's refusal by the
  budget (`budgets.load`); anything else (an HTTP or JSON-RPC error, another refusal, a tool error) is an error,
  and so is a traceback in guard's stderr;
- no overspend: what the fakes paid (the `payments` in their state files) <= the budget, and the ledger's spend
  for the budget >= what they paid;
- every hold settled: no hold left reserved, forwarded or in doubt in the ledger once every call has its answer
  (guard still running), nor once guard has stopped.

Printed: calls/s (from the first call to the last answer; opening the sessions apart), median and p99 per call,
paying calls paid and refused, the money paid and counted.

Run from the repository root:

    .venv/bin/python bench/http_load.py                         # 10 000 calls, concurrency 50
    .venv/bin/python bench/http_load.py --quick                 # 1 000 calls, concurrency 10
    .venv/bin/python bench/http_load.py --upstream-sessions shared   # a guard with upstream sharing
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _mcp_http import McpError, Served, Session, free_port, machine

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = [sys.executable, str(ROOT / "bench" / "load_402mcp.py")]
BUDGET = "load"
POLICY = """\
version: 1
default: deny
budgets:
  - name: load
    limit: {budget} sat
    scope: global
tools:
  l402-config: {{}}
  l402-fetch:
    pays: true
    max_price: 50 sat
"""


def site(n: int) -> str:
    """A paid resource on an origin of its own."""
    return f"https://shop{n}.example/item"


PAY_EVERY = 10


def price(n: int) -> int:
    """1 to 5 sat, in turn over the paying calls."""
    return 1 + (n // PAY_EVERY) % 5


def _text(result: dict[str, Any]) -> str:
    return str((result.get("content") or [{}])[0].get("text", ""))


class Tally:
    """What the calls got, by kind, and their latencies."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.errors: list[str] = []
        self.latencies_ns: list[int] = []
        self.paid_by_answers = 0

    def check(self, n: int, paying: bool, result: dict[str, Any]) -> None:
        structured = result.get("structuredContent") or {}
        if paying and structured.get("denied"):
            if structured.get("rule") == f"budgets.{BUDGET}":
                self.outcomes["fetch refused by the budget"] += 1
                return
            self.error(f"call {n}: refused by {structured.get('rule')}: {_text(result)[:200]}")
            return
        if result.get("isError"):
            self.error(f"call {n}: tool error: {_text(result)[:200]}")
            return
        body = json.loads(_text(result))
        if not paying:
            if "maxAutoPaySats" not in body:
                self.error(f"call {n}: l402-config answered {body!r:.200}")
            else:
                self.outcomes["config"] += 1
        elif body.get("satsPaid") != price(n):
            self.error(f"call {n}: l402-fetch of a {price(n)} sat resource answered {body!r:.200}")
        else:
            self.outcomes["fetch paid"] += 1
            self.paid_by_answers += price(n)

    def error(self, what: str) -> None:
        self.errors.append(what)


async def drive(url: str, calls: int, concurrency: int, pay_every: int, tally: Tally) -> tuple[float, float]:
    """Open `concurrency` sessions at once, then run the calls from one queue: (open seconds, run seconds)."""
    sessions = [Session(url) for _ in range(concurrency)]
    start = time.perf_counter()
    await asyncio.gather(*(session.open() for session in sessions))
    opened = time.perf_counter() - start
    queue = iter(range(calls))

    async def worker(session: Session) -> None:
        for n in queue:  # one shared iterator: each call taken once, by whichever session is free
            paying = n % pay_every == 0
            tool, arguments = ("l402-fetch", {"url": site(n), "autoPay": True}) if paying else ("l402-config", {})
            began = time.perf_counter_ns()
            try:
                result = await session.call(tool, arguments)
            except (McpError, OSError, ValueError) as exc:
                tally.error(f"call {n}: {type(exc).__name__}: {exc}"[:300])
                continue
            tally.latencies_ns.append(time.perf_counter_ns() - began)
            try:
                tally.check(n, paying, result)
            except (ValueError, KeyError, TypeError) as exc:
                tally.error(f"call {n}: unreadable answer ({exc}): {result!r:.200}")

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker(session) for session in sessions))
    finally:
        ran = time.perf_counter() - start
        await asyncio.gather(*(session.close() for session in sessions))
    return opened, ran


# Read by the checkout's own `ledgers` (`--checkout`: its schema may be newer than this one's). No recovery: the
# ledger as guard left it, nothing voided or put in doubt by reading.
READ_LEDGER = """
import json, sys
from ledgers import Amount, Budget, Ledger
path, name, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Ledger.open(path, recover=False) as ledger:
    spent = ledger.usage(Budget(name, Amount(limit, "sat"), "global")).spent
    print(json.dumps({"counted": int(spent), "unsettled": len(ledger.open_holds())}))
"""


def read_ledger(path: Path, budget: int, checkout: Path) -> tuple[int, int]:
    """The budget's spend in the ledger, and the holds not resolved."""
    command = [sys.executable, "-c", READ_LEDGER, str(path), BUDGET, str(budget)]
    figures = json.loads(subprocess.run(command, cwd=checkout, capture_output=True, text=True, check=True).stdout)
    return int(figures["counted"]), int(figures["unsettled"])


def paid_by_fakes(folder: Path) -> int:
    """Sats that left the fakes' wallets: every payment in every state file."""
    total = 0
    for state in folder.glob("state-*.json"):
        total += sum(int(p["amount"]) for p in json.loads(state.read_text())["payments"])
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10_000, help="calls in all (default 10000)")
    parser.add_argument("--concurrency", type=int, default=50, help="sessions, each one call at a time (default 50)")
    parser.add_argument("--pay-every", type=int, default=10, help="every Nth call pays (default 10)")
    parser.add_argument("--budget", type=int, default=1500, help="the global budget in sat (default 1500)")
    parser.add_argument("--upstream-sessions", metavar="MODE", help="pass --upstream-sessions MODE to guard")
    parser.add_argument("--quick", action="store_true", help="1000 calls, concurrency 10, a 150 sat budget")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the summary")
    parser.add_argument(
        "--checkout", metavar="DIR", type=Path, help="run the guard of another checkout of this repository (same venv)"
    )
    args = parser.parse_args()
    checkout = (args.checkout or ROOT).resolve()
    global PAY_EVERY
    PAY_EVERY = args.pay_every
    if args.quick:
        args.calls, args.concurrency, args.budget = 1000, 10, 150
    folder = Path(tempfile.mkdtemp(prefix="bench-http-load-"))
    (folder / "policy.yaml").write_text(POLICY.format(budget=args.budget))
    paying = range(0, args.calls, args.pay_every)
    (folder / "template.json").write_text(json.dumps({"prices": {site(n): price(n) for n in paying}}))
    port = free_port()
    command = [sys.executable, "-m", "guard", "run", "--listen", f"127.0.0.1:{port}"]
    command += ["--policy", str(folder / "policy.yaml"), "--ledger", str(folder / "ledger.db")]
    command += ["--max-sessions", str(args.concurrency + 16)]
    if args.upstream_sessions:
        command += ["--upstream-sessions", args.upstream_sessions]
    env = {"BENCH_FAKE_DIR": str(folder), "XDG_DATA_HOME": str(folder)}
    machine_before = machine()
    guard = Served("guard", [*command, "--", *UPSTREAM], port, env, cwd=checkout)
    tally = Tally()
    try:
        opened, ran = asyncio.run(drive(guard.url, args.calls, args.concurrency, args.pay_every, tally))
        # Every call has its answer: its hold must be settled already, before guard's shutdown could resolve any.
        _, unsettled_running = read_ledger(folder / "ledger.db", args.budget, checkout)
    finally:
        guard.stop()
    tracebacks = guard.log.read_text(errors="replace").count("Traceback")
    if tracebacks:
        tally.error(f"{tracebacks} traceback(s) in guard's stderr ({guard.log})")
    counted, unsettled = read_ledger(folder / "ledger.db", args.budget, checkout)
    paid = paid_by_fakes(folder)
    ms = sorted(ns / 1e6 for ns in tally.latencies_ns)
    checks = {
        "errors": len(tally.errors) == 0,
        "paid <= budget": paid <= args.budget,
        "counted >= paid": counted >= paid,
        "every hold settled (guard running, then stopped)": unsettled_running == unsettled == 0,
        "every call answered": len(ms) + len(tally.errors) >= args.calls,
    }
    result = {
        "machine": {**machine_before, "load_after": os.getloadavg()},
        "calls": args.calls,
        "concurrency": args.concurrency,
        "pay_every": args.pay_every,
        "budget_sat": args.budget,
        "upstream_sessions": args.upstream_sessions or "guard's default",
        "guard_checkout": str(checkout),
        "open_s": opened,
        "run_s": ran,
        "calls_per_s": len(ms) / ran if ran else 0.0,
        "median_ms": statistics.median(ms) if ms else None,
        "p99_ms": statistics.quantiles(ms, n=100, method="inclusive")[98] if len(ms) > 1 else None,
        "outcomes": dict(tally.outcomes),
        "errors": len(tally.errors),
        "first_errors": tally.errors[:5],
        "paid_by_upstream_sat": paid,
        "paid_in_answers_sat": tally.paid_by_answers,
        "counted_by_ledger_sat": counted,
        "holds_unsettled_running": unsettled_running,
        "holds_unsettled": unsettled,
        "checks": checks,
        "folder": str(folder),
    }
    print(json.dumps(result, indent=2) if args.json else summary(result))
    sys.exit(0 if all(checks.values()) else 1)


def summary(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"http load: {r['calls']} calls at concurrency {r['concurrency']} over HTTP through guard "
        f"(upstream sessions: {r['upstream_sessions']}), every {r['pay_every']}th an l402-fetch against one "
        f"{r['budget_sat']} sat budget",
        f"{m['cpu_count']} cores ({m['cpu']}), Python {m['python']}, mcp {m['mcp']}; load average before "
        f"{m['load_before'][0]:.2f}, after {m['load_after'][0]:.2f}; guard from {r['guard_checkout']}",
        "",
        f"opened {r['concurrency']} sessions in {r['open_s']:.2f} s; ran in {r['run_s']:.2f} s: "
        f"{r['calls_per_s']:.0f} calls/s, median {r['median_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms",
        f"outcomes: {r['outcomes']}",
        f"paid by the upstream {r['paid_by_upstream_sat']} sat (answers said {r['paid_in_answers_sat']}); "
        f"counted by the ledger {r['counted_by_ledger_sat']} sat; budget {r['budget_sat']} sat; "
        f"holds unsettled {r['holds_unsettled_running']} (guard running), {r['holds_unsettled']} (stopped); "
        f"errors {r['errors']}",
        *(f"  {e}" for e in r["first_errors"]),
        "",
        *(f"{'ok  ' if ok else 'FAIL'} {name}" for name, ok in r["checks"].items()),
        f"(files: {r['folder']})",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
