"""Relay latency: what does putting `guard` in front of an MCP server cost per tool call?

Measures the latency of N sequential `tools/call noop` requests (default 500, `--calls`) against
bench/trivial_upstream.py, a stdio upstream that answers "ok" at once, two ways in the same run:

- DIRECT: the client spawns trivial_upstream.py over stdio;
- GUARD:  the client spawns `python -m guard run -- python bench/trivial_upstream.py` over stdio;
- TRACED (with `--traces`): the same guard with traces on (the `otel` extra; OTLP/HTTP to a sink in this
  process that answers 200), so the table shows what tracing adds and what it costs when off (GUARD).

Both sessions are open at the same time and the calls are INTERLEAVED (one direct call, one guarded call,
swapping which goes first on every pair) so machine noise hits both sides equally. Each side gets a
warm-up (`--warmup`, default 50 calls) that is not measured. Every call is timed with
`time.perf_counter_ns` around `await session.call_tool("noop")`.

The client is the SDK's lowest-overhead path: `ClientSession` over `stdio_client` with
`session.initialize()` (handshake era, `--mode legacy`, the default). `--mode 2026-07-28` uses the
high-level `Client(params, mode="2026-07-28")` instead (no handshake; per-request envelope).

Run from the repository root:

    .venv/bin/python bench/relay_latency.py                 # table
    .venv/bin/python bench/relay_latency.py --calls 2000    # more samples
    .venv/bin/python bench/relay_latency.py --json          # machine-readable
    .venv/bin/python bench/relay_latency.py --mode 2026-07-28
    .venv/bin/python bench/relay_latency.py --traces       # a third side: guard with traces on
    .venv/bin/python bench/relay_latency.py --profile-guard /tmp/g.prof   # guard under cProfile
    .venv/bin/python -m pstats /tmp/g.prof                                 # then: sort tottime / stats 30

Goal: ratio of medians (guard / direct) <= 1.3 on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import version
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, ClientSession, StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = str(ROOT / "bench" / "trivial_upstream.py")
GOAL_RATIO = 1.3

Call = Callable[[], Awaitable[Any]]


def _direct_params() -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=[UPSTREAM], cwd=str(ROOT))


# Runs `guard ARGS...` under cProfile and writes the stats on any exit, SIGTERM included: the SDK's
# stdio_client SIGTERMs a server that has not exited 2 s after its stdin closed, and plain
# `python -m cProfile` would die without writing anything.
PROFILE_GUARD = """
import cProfile, signal, sys
out, sys.argv = sys.argv[1], ["guard", *sys.argv[2:]]
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
prof = cProfile.Profile()
prof.enable()
try:
    from guard.cli.app import main
    main()
except BaseException:
    pass
finally:
    prof.disable()
    prof.dump_stats(out)
"""


class _OtlpSink:
    """An OTLP/HTTP endpoint on 127.0.0.1 that accepts every export (a collector doing nothing)."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def env(self) -> dict[str, str]:
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.server.server_address[1]}"}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _guard_params(profile: str | None, policy: str, env: dict[str, str] | None = None) -> StdioServerParameters:
    # A fresh SQLite ledger per run: the guard counts and records every call in it.
    ledger = Path(tempfile.mkdtemp(prefix="guard-bench-")) / "ledger.db"
    guard = [
        "run",
        "--policy",
        policy,
        "--ledger",
        str(ledger),
        "--",
        sys.executable,
        UPSTREAM,
    ]
    args = ["-c", PROFILE_GUARD, profile, *guard] if profile else ["-m", "guard", *guard]
    # The SDK gives a server only a safe subset of the environment unless told otherwise.
    full_env = {**os.environ, **env} if env is not None else None
    return StdioServerParameters(command=sys.executable, args=args, cwd=str(ROOT), env=full_env)


@asynccontextmanager
async def _open(params: StdioServerParameters, mode: str) -> AsyncIterator[Call]:
    """Connect to a stdio server and yield a function that makes one `tools/call noop`."""
    if mode == "legacy":
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()

            async def call() -> Any:
                return await session.call_tool("noop")

            yield call
    else:
        async with Client(params, mode=mode) as client:

            async def call() -> Any:
                return await client.call_tool("noop")

            yield call


async def _timed(call: Call) -> int:
    start = time.perf_counter_ns()
    result = await call()
    elapsed = time.perf_counter_ns() - start
    if result.is_error or result.content[0].text != "ok":
        raise RuntimeError(f"unexpected result: {result!r}")
    return elapsed


def _summary(samples_ns: list[int]) -> dict[str, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    return {
        "median_ms": statistics.median(ms),
        "p90_ms": statistics.quantiles(ms, n=10, method="inclusive")[8],
        "mean_ms": statistics.fmean(ms),
        "min_ms": ms[0],
    }


async def measure(
    calls: int, warmup: int, mode: str, profile: str | None, policy: str, traces: bool = False
) -> dict[str, Any]:
    sink = _OtlpSink() if traces else None
    try:
        async with AsyncExitStack() as stack:
            sides = [
                await stack.enter_async_context(_open(_direct_params(), mode)),
                await stack.enter_async_context(_open(_guard_params(profile, policy), mode)),
            ]
            if sink is not None:
                sides.append(await stack.enter_async_context(_open(_guard_params(None, policy, sink.env), mode)))
            for _ in range(warmup):
                for side in sides:
                    await _timed(side)
            samples: list[list[int]] = [[] for _ in sides]
            for i in range(calls):
                for k in range(len(sides)):  # a different side first on every round
                    j = (i + k) % len(sides)
                    samples[j].append(await _timed(sides[j]))
    finally:
        if sink is not None:
            sink.close()
    direct_ns, guard_ns = samples[0], samples[1]
    d, g = _summary(direct_ns), _summary(guard_ns)
    ratio = g["median_ms"] / d["median_ms"]
    traced: dict[str, Any] = {}
    if traces:
        t = _summary(samples[2])
        traced = {"traced": t, "tracing_adds_ms": t["median_ms"] - g["median_ms"]}
    return {
        **traced,
        "calls": calls,
        "warmup": warmup,
        "mode": mode,
        "direct": d,
        "guard": g,
        "ratio_of_medians": ratio,
        "added_ms": g["median_ms"] - d["median_ms"],
        "goal_ratio": GOAL_RATIO,
        "meets_goal": ratio <= GOAL_RATIO,
        "python": platform.python_version(),
        "mcp": version("mcp"),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
    }


def _table(r: dict[str, Any]) -> str:
    d, g = r["direct"], r["guard"]
    verdict = "meets" if r["meets_goal"] else "MISSES"
    return "\n".join(
        [
            f"relay latency: {r['calls']} interleaved tools/call noop per side "
            f"(warm-up {r['warmup']}), mode {r['mode']}",
            f"python {r['python']}, mcp {r['mcp']}, os.cpu_count() = {r['cpu_count']}",
            "",
            f"{'':8}{'median ms':>11}{'p90 ms':>10}{'mean ms':>10}{'min ms':>10}",
            f"{'direct':8}{d['median_ms']:11.3f}{d['p90_ms']:10.3f}{d['mean_ms']:10.3f}{d['min_ms']:10.3f}",
            f"{'guard':8}{g['median_ms']:11.3f}{g['p90_ms']:10.3f}{g['mean_ms']:10.3f}{g['min_ms']:10.3f}",
            *_traced_rows(r),
            "",
            f"ratio of medians {r['ratio_of_medians']:.2f} (goal <= {r['goal_ratio']}: {verdict}); "
            f"added {r['added_ms']:.3f} ms per call",
        ]
    )


def _traced_rows(r: dict[str, Any]) -> list[str]:
    if "traced" not in r:
        return []
    t = r["traced"]
    return [
        f"{'traced':8}{t['median_ms']:11.3f}{t['p90_ms']:10.3f}{t['mean_ms']:10.3f}{t['min_ms']:10.3f}",
        f"traces on add {r['tracing_adds_ms']:.3f} ms per call (median, traced vs guard)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="measured calls per side (default 500)")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured calls per side first (default 50)")
    parser.add_argument(
        "--mode",
        choices=["legacy", "2026-07-28"],
        default="legacy",
        help="legacy: ClientSession + initialize (default); 2026-07-28: Client(params, mode='2026-07-28')",
    )
    parser.add_argument(
        "--policy",
        default=str(ROOT / "bench/policy.yaml"),
        help="the guard's policy (default bench/policy.yaml: a durable rate limit, so a ledger write per call;"
        " bench/policy-allow.yaml: allowed, no ledger write on the call's path)",
    )
    parser.add_argument(
        "--traces", action="store_true", help="a third side: guard with traces on (needs the otel extra)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument(
        "--profile-guard",
        metavar="FILE",
        help="run the guard under cProfile, stats to FILE (skews the guard figures)",
    )
    args = parser.parse_args()
    if args.calls < 2:
        parser.error("--calls must be at least 2")
    result = anyio.run(measure, args.calls, args.warmup, args.mode, args.profile_guard, args.policy, args.traces)
    print(json.dumps(result, indent=2) if args.json else _table(result))


if __name__ == "__main__":
    main()
