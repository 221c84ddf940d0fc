"""Paying-call latency: what does guard add to a call that pays, with its hold reserved before the call
is forwarded and settled after, in a SQLite ledger opened `synchronous=FULL`?

Two stdio sessions open at once, calls INTERLEAVED (one direct, one guarded, swapping which goes first):

- DIRECT: the client spawns bench/paying_upstream.py (`l402-fetch` answers at once as 402-mcp 4.2.1
  does after paying 21 sat);
- GUARD:  `guard run --policy bench/policy-paying.yaml -- python bench/paying_upstream.py`: each call
  is priced (a fixed 21 sat: no price preview is asked upstream), checked against two budgets, reserved
  (one durable write), forwarded, and settled with its call event (one durable write).

The ledger is a fresh SQLite file in --ledger-dir (default: a temporary directory; put it on the disk
whose syncs you want to measure). Also prints what one durable SQLite commit costs there.

    .venv/bin/python bench/paying_call.py                 # table
    .venv/bin/python bench/paying_call.py --calls 2000 --json
    .venv/bin/python bench/paying_call.py --profile-guard /tmp/pay.prof

Goal (issue 14): guard adds <= 1 ms (median) to a direct paying call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from _profile import PROFILE_GUARD
from mcp import ClientSession, StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = str(ROOT / "bench" / "paying_upstream.py")
POLICY = str(ROOT / "bench" / "policy-paying.yaml")
GOAL_ADDED_MS = 1.0
ARGUMENTS = {"url": "http://127.0.0.1:8402/api/joke", "autoPay": True}


Call = Callable[[], Awaitable[Any]]


def _params(ledger_dir: str | None, guarded: bool, profile: str | None) -> StdioServerParameters:
    if not guarded:
        return StdioServerParameters(command=sys.executable, args=[UPSTREAM], cwd=str(ROOT))
    ledger = Path(tempfile.mkdtemp(prefix="guard-pay-", dir=ledger_dir)) / "ledger.db"
    guard = ["run", "--policy", POLICY, "--ledger", str(ledger), "--", sys.executable, UPSTREAM]
    args = ["-c", PROFILE_GUARD, profile, *guard] if profile else ["-m", "guard", *guard]
    return StdioServerParameters(command=sys.executable, args=args, cwd=str(ROOT))


@asynccontextmanager
async def _open(params: StdioServerParameters) -> AsyncIterator[Call]:
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()

        async def call() -> Any:
            return await session.call_tool("l402-fetch", ARGUMENTS)

        yield call


async def _timed(call: Call) -> int:
    start = time.perf_counter_ns()
    result = await call()
    elapsed = time.perf_counter_ns() - start
    if result.is_error or '"satsPaid": 21' not in result.content[0].text:
        raise RuntimeError(f"unexpected result: {result!r}")
    return elapsed


def _summary(samples_ns: list[int]) -> dict[str, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    return {
        "median_ms": statistics.median(ms),
        "p99_ms": statistics.quantiles(ms, n=100, method="inclusive")[98],
        "mean_ms": statistics.fmean(ms),
        "min_ms": ms[0],
    }


def _durable_commit_ms(ledger_dir: str | None, commits: int = 200) -> float:
    """The median time of one committed INSERT in a WAL SQLite file with synchronous=FULL, on that disk."""
    path = Path(tempfile.mkdtemp(prefix="guard-sync-", dir=ledger_dir)) / "sync.db"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (x INTEGER)")
    times = []
    for i in range(commits):
        start = time.perf_counter_ns()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?)", (i,))
        db.execute("COMMIT")
        times.append(time.perf_counter_ns() - start)
    db.close()
    return statistics.median(times) / 1e6


async def measure(calls: int, warmup: int, ledger_dir: str | None, profile: str | None) -> dict[str, Any]:
    async with AsyncExitStack() as stack:
        sides = [
            await stack.enter_async_context(_open(_params(ledger_dir, False, None))),
            await stack.enter_async_context(_open(_params(ledger_dir, True, profile))),
        ]
        for _ in range(warmup):
            for side in sides:
                await _timed(side)
        samples: list[list[int]] = [[], []]
        for i in range(calls):
            for k in range(2):
                j = (i + k) % 2
                samples[j].append(await _timed(sides[j]))
    d, g = _summary(samples[0]), _summary(samples[1])
    added = g["median_ms"] - d["median_ms"]
    return {
        "calls": calls,
        "warmup": warmup,
        "direct": d,
        "guard": g,
        "added_ms": added,
        "added_p99_ms": g["p99_ms"] - d["p99_ms"],
        "durable_commit_ms": _durable_commit_ms(ledger_dir),
        "goal_added_ms": GOAL_ADDED_MS,
        "meets_goal": added <= GOAL_ADDED_MS,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def _table(r: dict[str, Any]) -> str:
    d, g = r["direct"], r["guard"]
    verdict = "meets" if r["meets_goal"] else "MISSES"
    row = "{:8}{:11.3f}{:10.3f}{:10.3f}{:10.3f}"
    return "\n".join(
        [
            f"paying call: {r['calls']} interleaved tools/call l402-fetch per side (warm-up {r['warmup']})",
            f"python {r['python']}, os.cpu_count() = {r['cpu_count']}, one durable SQLite commit here:"
            f" {r['durable_commit_ms']:.3f} ms",
            "",
            f"{'':8}{'median ms':>11}{'p99 ms':>10}{'mean ms':>10}{'min ms':>10}",
            row.format("direct", d["median_ms"], d["p99_ms"], d["mean_ms"], d["min_ms"]),
            row.format("guard", g["median_ms"], g["p99_ms"], g["mean_ms"], g["min_ms"]),
            "",
            f"guard adds {r['added_ms']:.3f} ms (median; goal <= {r['goal_added_ms']} ms: {verdict}),"
            f" {r['added_p99_ms']:.3f} ms at p99",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="measured calls per side (default 500)")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured calls per side first (default 50)")
    parser.add_argument("--ledger-dir", help="where the guard's SQLite ledger goes (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--profile-guard", metavar="FILE", help="run the guard under cProfile, stats to FILE")
    args = parser.parse_args()
    if args.calls < 2:
        parser.error("--calls must be at least 2")
    result = anyio.run(measure, args.calls, args.warmup, args.ledger_dir, args.profile_guard)
    print(json.dumps(result, indent=2) if args.json else _table(result))


if __name__ == "__main__":
    main()
