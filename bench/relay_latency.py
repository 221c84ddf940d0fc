"""Relay latency and throughput: what does putting `guard` in front of an MCP server cost, next to mcp-proxy?

Every side serves bench/trivial_upstream.py (one tool, `noop`, answering "ok" at once), in the same run:

- direct-stdio:  the client spawns trivial_upstream.py over stdio;
- guard-stdio:   the client spawns `python -m guard run -- python bench/trivial_upstream.py` over stdio;
- traced-stdio (with `--traces`): the same guard with traces on (the `otel` extra; OTLP/HTTP to a sink in this
  process that answers 200);
- direct-http:   trivial_upstream.py served over streamable HTTP by the SDK itself (`--http PORT`): no proxy,
  answers as SSE streams (as guard's are); direct-http-json: the same answering application/json (as mcp-proxy's);
- guard-http MODE: `guard run --listen 127.0.0.1:PORT --policy bench/policy-allow.yaml -- python
  bench/trivial_upstream.py`, one side per `--modes` entry: `per-session`, `per-identity`, `shared` (passed as
  `--upstream-sessions MODE`), `per-session+warm` (also `--warm N`, `--warm` default 20). A guard without
  `--upstream-sessions` runs only `per-session` (its only behaviour) and the other modes are reported blocked;
- mcp-proxy:     `mcp-proxy --port PORT -- python bench/trivial_upstream.py` (0.13 from PyPI, in .venv-mcp-proxy/:
  scripts/install-bench-deps), the usual pure forwarder, in front of the same stdio upstream.

Measured:

1. Sequential latency (`--calls`, default 500, after `--warmup` 50): one session per side, all open at once, the
   calls INTERLEAVED (one call per side per round, a different side first each round) so machine noise hits all
   sides alike; median, p90, p99. Over stdio the client is the SDK's `ClientSession` (`--mode 2026-07-28`: the
   high-level `Client` instead); over HTTP a lean raw JSON-RPC client on httpx (bench/_mcp_http.py), the same in
   front of every HTTP side, 2025-11-25 handshake era (mcp-proxy runs the MCP SDK 1.x: no 2026-07-28 era).
2. For each of `--sessions` (default 20,100): every HTTP side opens that many sessions at once (each its own
   client and connection; the time until all are initialised), then `--rounds` rounds (default 3) of
   `--burst-calls` calls (default 1000) spread evenly over the open sessions, sides interleaved, calls/s the
   median of the rounds; with the sessions open, the proxy's RSS, its upstream processes (its live descendants,
   from /proc) and their RSS; after the sessions are closed (DELETE), the upstream processes left (waited for
   at most 10 s).

Run from the repository root (scripts/install-bench-deps first):

    .venv/bin/python bench/relay_latency.py                 # everything: stdio and HTTP, 20 and 100 sessions
    .venv/bin/python bench/relay_latency.py --quick         # 200 calls, 20 sessions, 1 round: a minute
    .venv/bin/python bench/relay_latency.py --fronts stdio  # the stdio sides only (as before HTTP was measured)
    .venv/bin/python bench/relay_latency.py --modes per-session,per-session+warm,shared --warm 20
    .venv/bin/python bench/relay_latency.py --json          # machine-readable
    .venv/bin/python bench/relay_latency.py --mode 2026-07-28 --fronts stdio
    .venv/bin/python bench/relay_latency.py --traces --fronts stdio   # guard with traces on
    .venv/bin/python bench/relay_latency.py --profile-guard /tmp/g.prof  # guard under cProfile (stdio: FILE,
    .venv/bin/python -m pstats /tmp/g.prof                               #  HTTP: FILE.http)

Goals (issue 14, ratios in one run): stdio, an allowed call (the default policy) <= 1.2x direct;
HTTP, one session: guard median <= 1.0x mcp-proxy; 20 open sessions: calls/s >= 1.0x mcp-proxy; opening 20
sessions <= 2x mcp-proxy's time (shared) and <= 1 s (per-session, warm pool of 20); 100 open sessions on a
shared upstream: guard's RSS < 200 MiB.
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
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
from _mcp_http import Served, Session, free_port, machine
from _profile import PROFILE_GUARD
from mcp import Client, ClientSession, StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = str(ROOT / "bench" / "trivial_upstream.py")
GOAL_RATIO = 1.2  # stdio: an allowed call vs direct
MCP_PROXY = ROOT / ".venv-mcp-proxy" / "bin" / "mcp-proxy"
# The checkout whose guard runs (`--checkout`): `python -m guard` finds the guard/ of its working directory first.
GUARD_ROOT = ROOT
MiB = 1024 * 1024

Call = Callable[[], Awaitable[Any]]


def _direct_params() -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=[UPSTREAM], cwd=str(ROOT))


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
    return StdioServerParameters(command=sys.executable, args=args, cwd=str(GUARD_ROOT), env=full_env)


def _check(result: Any) -> None:
    """An SDK result, or a raw JSON one over HTTP, must be the upstream's "ok"."""
    if isinstance(result, dict):
        text = (result.get("content") or [{}])[0].get("text")
        failed = bool(result.get("isError"))
    else:
        text, failed = result.content[0].text, result.is_error
    if failed or text != "ok":
        raise RuntimeError(f"unexpected result: {result!r}")


@asynccontextmanager
async def _open(params: StdioServerParameters, mode: str) -> AsyncIterator[Call]:
    """Connect to a stdio server and yield a function that makes one checked `tools/call noop`."""
    if mode == "legacy":
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()

            async def call() -> None:
                _check(await session.call_tool("noop"))

            yield call
    else:
        async with Client(params, mode=mode) as client:

            async def call() -> None:
                _check(await client.call_tool("noop"))

            yield call


@asynccontextmanager
async def _open_http(url: str) -> AsyncIterator[Call]:
    """One session over streamable HTTP, and a function that makes one checked `tools/call noop`."""
    session = Session(url)
    try:
        await session.open()

        async def call() -> None:
            _check(await session.call("noop"))

        yield call
    finally:
        await session.close()


async def _timed(call: Call) -> int:
    start = time.perf_counter_ns()
    await call()
    return time.perf_counter_ns() - start


def _summary(samples_ns: list[int]) -> dict[str, float]:
    ms = sorted(s / 1e6 for s in samples_ns)
    return {
        "median_ms": statistics.median(ms),
        "p90_ms": statistics.quantiles(ms, n=10, method="inclusive")[8],
        "p99_ms": statistics.quantiles(ms, n=100, method="inclusive")[98],
        "mean_ms": statistics.fmean(ms),
        "min_ms": ms[0],
    }


# --- the HTTP sides --------------------------------------------------------------------------------------------


@cache
def _guard_flags() -> str:
    """`guard run --help` of this checkout: which flags (`--upstream-sessions`, `--warm`) it has."""
    return subprocess.run(
        [sys.executable, "-m", "guard", "run", "--help"], capture_output=True, text=True, cwd=GUARD_ROOT, check=False
    ).stdout


@dataclass
class HttpSide:
    """A server measured over HTTP: how to start it, and once started, the process."""

    name: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    cwd: Path = ROOT
    served: Served | None = None

    def start(self) -> Served:
        self.served = Served(
            self.name, [part.replace("{port}", str(self.port)) for part in self.command], self.port, self.env, self.cwd
        )
        return self.served


def _http_sides(
    modes: list[str], warm: int, max_sessions: int, policy: str, profile: str | None, blocked: list[str]
) -> list[HttpSide]:
    """direct-http, one guard per mode this guard can run (the others named in `blocked`, with why), mcp-proxy."""
    sides = [
        HttpSide("direct-http", [sys.executable, UPSTREAM, "--http", "{port}"]),
        HttpSide("direct-http-json", [sys.executable, UPSTREAM, "--http", "{port}", "--json"]),
    ]
    flags = _guard_flags()
    for mode in modes:
        sharing, _, extra = mode.partition("+")
        if sharing not in ("per-session", "per-identity", "shared") or extra not in ("", "warm", "json"):
            raise SystemExit(
                f"--modes: unknown mode {mode!r} (per-session, per-identity, shared, per-session+warm, MODE+json)"
            )
        options: list[str] = []
        if "--upstream-sessions" in flags:
            options += ["--upstream-sessions", sharing]
        elif sharing != "per-session":
            blocked.append(f"guard-http {mode}: this guard has no --upstream-sessions (every session its own upstream)")
            continue
        if extra == "warm":
            if "--warm" not in flags:
                blocked.append(f"guard-http {mode}: this guard has no --warm")
                continue
            options += ["--warm", str(warm)]
        if extra == "json":
            if "--http-answers" not in flags:
                blocked.append(f"guard-http {mode}: this guard has no --http-answers")
                continue
            options += ["--http-answers", "json"]
        ledger_dir = Path(tempfile.mkdtemp(prefix="guard-bench-http-"))
        run = ["run", "--listen", "127.0.0.1:{port}", "--policy", policy, "--ledger", str(ledger_dir / "ledger.db")]
        run += ["--max-sessions", str(max_sessions), *options, "--", sys.executable, UPSTREAM]
        # The first guard only runs under cProfile: `--profile-guard FILE` writes FILE.http when it stops.
        if profile and not any(side.name.startswith("guard-http") for side in sides):
            command = [sys.executable, "-c", PROFILE_GUARD, profile + ".http", *run]
        else:
            command = [sys.executable, "-m", "guard", *run]
        name = f"guard-http {sharing}" + {"": "", "warm": f" warm {warm}", "json": " json"}[extra]
        sides.append(HttpSide(name, command, {"XDG_DATA_HOME": str(ledger_dir)}, cwd=GUARD_ROOT))
    if not MCP_PROXY.exists():
        blocked.append(f"mcp-proxy: {MCP_PROXY.relative_to(ROOT)} missing (run scripts/install-bench-deps)")
    else:
        proxy = [str(MCP_PROXY), "--host", "127.0.0.1", "--port", "{port}", "--log-level", "WARNING"]
        sides.append(HttpSide("mcp-proxy", [*proxy, "--", sys.executable, UPSTREAM]))
    return sides


async def _open_many(url: str, n: int) -> tuple[list[Session], float]:
    """`n` sessions opened at once, and the seconds until the last one is initialised."""
    sessions = [Session(url) for _ in range(n)]
    start = time.perf_counter()
    await asyncio.gather(*(session.open() for session in sessions))
    return sessions, time.perf_counter() - start


async def _burst(sessions: list[Session], calls: int) -> float:
    """`calls` checked calls spread evenly over the open sessions, all sessions at once: calls per second."""
    each = max(1, calls // len(sessions))

    async def run(session: Session) -> None:
        for _ in range(each):
            _check(await session.call("noop"))

    start = time.perf_counter()
    await asyncio.gather(*(run(session) for session in sessions))
    return each * len(sessions) / (time.perf_counter() - start)


async def _upstreams_after_close(served: Served, baseline: int) -> int:
    """Upstream processes above `baseline` still alive after the sessions closed (waiting at most 10 s)."""
    deadline = time.monotonic() + 10
    # Another process's children: nothing here can be awaited, so a bounded look every 0.2 s.
    while (left := len(served.descendants()) - baseline) > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
        await anyio.sleep(0.2)
    return max(left, 0)


async def _sessions_phase(sides: list[HttpSide], n: int, rounds: int, burst_calls: int, turn: int) -> dict[str, Any]:
    """For `n` sessions: open them on every side, interleaved throughput rounds, memory, then close."""
    results: dict[str, Any] = {side.name: {} for side in sides}
    opened: dict[str, list[Session]] = {}
    baseline = {side.name: len(side.served.descendants()) for side in sides if side.served}
    try:
        for k in range(len(sides)):  # sides open in turn, a different one first for each n
            side = sides[(turn + k) % len(sides)]
            assert side.served is not None
            opened[side.name], seconds = await _open_many(side.served.url, n)
            results[side.name]["open_s"] = seconds
        for side in sides:
            assert side.served is not None
            below = side.served.descendants()
            results[side.name].update(
                rss_mib=side.served.rss() / MiB,
                upstreams=len(below),
                upstreams_rss_mib=sum(side.served.rss(pid) for pid in below) / MiB,
            )
        rates: dict[str, list[float]] = {side.name: [] for side in sides}
        for r in range(rounds):
            for k in range(len(sides)):
                side = sides[(r + k) % len(sides)]
                rates[side.name].append(await _burst(opened[side.name], burst_calls))
        for side in sides:
            results[side.name].update(calls_per_s=statistics.median(rates[side.name]), rounds=rates[side.name])
    finally:
        for sessions in opened.values():
            await asyncio.gather(*(session.close() for session in sessions))
    for side in sides:
        assert side.served is not None
        results[side.name]["left_after_close"] = await _upstreams_after_close(side.served, baseline[side.name])
    return results


# --- the run ---------------------------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    proxy_version = "not installed"
    if MCP_PROXY.exists():
        asked = subprocess.run([str(MCP_PROXY), "--version"], capture_output=True, text=True, check=False)
        proxy_version = asked.stdout
    return {**machine(), "mcp_proxy": proxy_version.strip().removeprefix("mcp-proxy ") or "unknown"}


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    fronts = set(args.fronts.split(","))
    sink = _OtlpSink() if args.traces and "stdio" in fronts else None
    blocked: list[str] = []
    http_sides: list[HttpSide] = []
    sessions = [int(n) for n in args.sessions.split(",") if n]
    result: dict[str, Any] = {
        "machine": _machine(),
        "calls": args.calls,
        "warmup": args.warmup,
        "mode": args.mode,
        "policy": Path(args.policy).name,
        "guard_checkout": str(GUARD_ROOT),
    }
    try:
        if "http" in fronts:
            http_sides = _http_sides(
                args.modes.split(","),
                args.warm,
                max(sessions, default=1) + 16,
                args.policy,
                args.profile_guard,
                blocked,
            )
            for side in http_sides:
                side.start()
        async with AsyncExitStack() as stack:
            names: list[str] = []
            calls: list[Call] = []
            if "stdio" in fronts:
                names += ["direct-stdio", "guard-stdio"]
                calls.append(await stack.enter_async_context(_open(_direct_params(), args.mode)))
                guard = _guard_params(args.profile_guard, args.policy)
                calls.append(await stack.enter_async_context(_open(guard, args.mode)))
                if sink is not None:
                    names.append("traced-stdio")
                    traced = _guard_params(None, args.policy, sink.env)
                    calls.append(await stack.enter_async_context(_open(traced, args.mode)))
            for side in http_sides:
                assert side.served is not None
                names.append(side.name)
                calls.append(await stack.enter_async_context(_open_http(side.served.url)))
            for _ in range(args.warmup):
                for call in calls:
                    await _timed(call)
            samples: list[list[int]] = [[] for _ in calls]
            for i in range(args.calls):
                for k in range(len(calls)):  # a different side first on every round
                    j = (i + k) % len(calls)
                    samples[j].append(await _timed(calls[j]))
        result["sequential"] = {name: _summary(s) for name, s in zip(names, samples, strict=True)}
        result["sessions"] = {}
        for turn, n in enumerate(sessions if http_sides else []):
            result["sessions"][str(n)] = await _sessions_phase(http_sides, n, args.rounds, args.burst_calls, turn)
    finally:
        for side in http_sides:
            if side.served is not None:
                side.served.stop()
        if sink is not None:
            sink.close()
    result["blocked"] = blocked
    result["machine"]["load_after"] = os.getloadavg()
    result["goals"] = _goals(result)
    return result


def _goals(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 14's goals this run measured: what, the figure, the goal, met or not."""
    goals: list[dict[str, Any]] = []
    seq, by_n = r["sequential"], r["sessions"]

    def goal(what: str, value: float, limit: float, at_most: bool = True) -> None:
        goals.append(
            {"goal": what, "value": value, "limit": limit, "met": value <= limit if at_most else value >= limit}
        )

    if "direct-stdio" in seq and r["policy"] == "policy-allow.yaml":  # the goal is an allowed call's
        ratio = seq["guard-stdio"]["median_ms"] / seq["direct-stdio"]["median_ms"]
        goal("stdio: guard / direct median, an allowed call", ratio, GOAL_RATIO)
    proxy = seq.get("mcp-proxy")
    for name, figures in seq.items():
        if not name.startswith("guard-http") or proxy is None:
            continue
        goal(f"HTTP one session: {name} / mcp-proxy median", figures["median_ms"] / proxy["median_ms"], 1.0)
        if "20" in by_n:
            twenty = by_n["20"]
            rate = twenty[name]["calls_per_s"] / twenty["mcp-proxy"]["calls_per_s"]
            goal(f"20 sessions: {name} / mcp-proxy calls/s", rate, 1.0, at_most=False)
            if " warm" in name:
                goal(f"opening 20 sessions: {name}, seconds", twenty[name]["open_s"], 1.0)
            elif "shared" in name:
                ratio = twenty[name]["open_s"] / twenty["mcp-proxy"]["open_s"]
                goal(f"opening 20 sessions: {name} / mcp-proxy time", ratio, 2.0)
        if "100" in by_n and "shared" in name:
            goal(f"100 sessions: {name} RSS, MiB", by_n["100"][name]["rss_mib"], 200.0)
    return goals


def _table(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"relay latency and throughput: {m['cpu_count']} cores ({m['cpu']}), Python {m['python']}, mcp {m['mcp']}, "
        f"mcp-proxy {m['mcp_proxy']}",
        f"load average before {m['load_before'][0]:.2f}, after {m['load_after'][0]:.2f}; {m['platform']}",
        f"guard from {r['guard_checkout']}",
        "",
        f"Sequential: {r['calls']} interleaved `tools/call noop` per side (warm-up {r['warmup']}), "
        f"stdio era {r['mode']}, guard policy {r['policy']}",
        "",
        "| side | median ms | p90 ms | p99 ms | x direct (same front) | x mcp-proxy |",
        "|---|---|---|---|---|---|",
    ]
    seq = r["sequential"]
    for name, s in seq.items():
        direct = seq.get("direct-stdio" if name.endswith("stdio") else "direct-http")  # SSE, as guard answers
        proxy = seq.get("mcp-proxy")
        vs_direct = f"{s['median_ms'] / direct['median_ms']:.2f}" if direct else "-"
        vs_proxy = f"{s['median_ms'] / proxy['median_ms']:.2f}" if proxy and not name.endswith("stdio") else "-"
        lines.append(
            f"| {name} | {s['median_ms']:.3f} | {s['p90_ms']:.3f} | {s['p99_ms']:.3f} | {vs_direct} | {vs_proxy} |"
        )
    if "traced-stdio" in seq:
        added = seq["traced-stdio"]["median_ms"] - seq["guard-stdio"]["median_ms"]
        lines += ["", f"traces on add {added:.3f} ms per call (median, traced-stdio vs guard-stdio)"]
    for n, sides in r["sessions"].items():
        proxy = sides.get("mcp-proxy")
        lines += [
            "",
            f"{n} sessions open at once over HTTP (calls/s: median of the rounds, calls spread over the sessions)",
            "",
            "| side | open all s | calls/s | x mcp-proxy | proxy RSS MiB | upstream procs | upstreams RSS MiB "
            "| procs left after close |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, f in sides.items():
            vs = f"{f['calls_per_s'] / proxy['calls_per_s']:.2f}" if proxy else "-"
            procs = "(itself)" if name.startswith("direct-http") else str(f["upstreams"])
            lines.append(
                f"| {name} | {f['open_s']:.2f} | {f['calls_per_s']:.0f} | {vs} | {f['rss_mib']:.0f} | {procs} "
                f"| {f['upstreams_rss_mib']:.0f} | {f['left_after_close']} |"
            )
    if r["goals"]:
        lines += ["", "Goals (issue 14):"]
        for g in r["goals"]:
            lines.append(f"- {g['goal']}: {g['value']:.2f} (goal {g['limit']}): {'meets' if g['met'] else 'MISSES'}")
    for line in r["blocked"]:
        lines.append(f"- blocked: {line}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="sequential measured calls per side (default 500)")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured calls per side first (default 50)")
    parser.add_argument("--fronts", default="stdio,http", help="stdio, http or both (default stdio,http)")
    parser.add_argument(
        "--modes",
        default="per-session",
        help="guard-http sides: per-session, per-identity, shared, per-session+warm, MODE+json (--http-answers json) "
        "(default per-session)",
    )
    parser.add_argument("--warm", type=int, default=20, help="--warm N for per-session+warm (default 20)")
    parser.add_argument("--sessions", default="20,100", help="open sessions at once, comma-separated (default 20,100)")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per side (default 3)")
    parser.add_argument("--burst-calls", type=int, default=1000, help="calls per throughput round (default 1000)")
    parser.add_argument("--quick", action="store_true", help="200 calls, 20 warm-up, 20 sessions, 1 round of 400")
    parser.add_argument(
        "--mode",
        choices=["legacy", "2026-07-28"],
        default="legacy",
        help="stdio era: legacy: ClientSession + initialize (default); 2026-07-28: Client(params, mode='2026-07-28')",
    )
    parser.add_argument(
        "--policy",
        default=str(ROOT / "bench/policy-allow.yaml"),
        help="the guards' policy (default bench/policy-allow.yaml: allowed, no ledger write on the call's path;"
        " bench/policy.yaml: a durable rate limit, so a ledger write per call)",
    )
    parser.add_argument(
        "--traces", action="store_true", help="a stdio side more: guard with traces on (needs the otel extra)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    parser.add_argument("--save", metavar="FILE", type=Path, help="also write the JSON object to FILE")
    parser.add_argument(
        "--checkout",
        metavar="DIR",
        type=Path,
        help="run the guard of another checkout of this repository (same venv): compare two versions",
    )
    parser.add_argument(
        "--profile-guard",
        metavar="FILE",
        help="run the stdio guard under cProfile, stats to FILE, and the first HTTP guard to FILE.http (skews both)",
    )
    args = parser.parse_args()
    if args.checkout:
        global GUARD_ROOT
        GUARD_ROOT = args.checkout.resolve()
    if args.quick:
        args.calls, args.warmup, args.sessions, args.rounds, args.burst_calls = 200, 20, "20", 1, 400
    if args.calls < 2:
        parser.error("--calls must be at least 2")
    result = anyio.run(measure, args)
    if args.save:
        args.save.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2) if args.json else _table(result))


if __name__ == "__main__":
    main()
