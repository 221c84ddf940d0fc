"""Opening HTTP sessions through `guard run --listen` in each `--upstream-sessions` mode, and what 100 open
sessions on a shared upstream cost: `.venv/bin/python scripts/measure_http_sharing.py [--runs N]`.

The upstream is tests/upstreams/dual_era.py (a Python mcp 2.3 server: a start costs an interpreter and the SDK's
imports, as a real Python upstream does). Each figure is the median of --runs runs, each with a fresh guard.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import INITIALIZE, free_port  # noqa: E402
from tests.proxy.processes import children  # noqa: E402

UPSTREAM = [sys.executable, str(ROOT / "tests" / "upstreams" / "dual_era.py")]
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
WAIT_S = 60.0


class Guard:
    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.dir = tempfile.TemporaryDirectory()
        command = [sys.executable, "-m", "guard", "run", "--listen", f"127.0.0.1:{self.port}"]
        command += ["--ledger", f"{self.dir.name}/ledger.db", "--max-sessions", "200", *args, "--", *UPSTREAM]
        env = {**os.environ, "GUARD_POLICY": str(ROOT / "tests" / "fixtures" / "allow-all.yaml")}
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
        self.warm_ready = threading.Event()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url, timeout=1.0)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("guard did not start")

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if "warm upstreams ready" in line:
                self.warm_ready.set()

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(WAIT_S)
        self.dir.cleanup()


async def open_sessions(url: str, count: int) -> tuple[float, list[str]]:
    """Open `count` sessions at once (initialize, then initialized); seconds taken and their ids."""
    async with httpx.AsyncClient(timeout=WAIT_S, limits=httpx.Limits(max_connections=count)) as http:

        async def one() -> str:
            opened = await http.post(url, json=INITIALIZE, headers=HEADERS)
            assert opened.status_code == 200, opened.text
            session = opened.headers["mcp-session-id"]
            await http.post(
                url,
                json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                headers={**HEADERS, "mcp-session-id": session},
            )
            return session

        start = time.perf_counter()
        sessions = await asyncio.gather(*(one() for _ in range(count)))
        return time.perf_counter() - start, list(sessions)


async def call_in_each(url: str, sessions: list[str]) -> None:
    async with httpx.AsyncClient(timeout=WAIT_S, limits=httpx.Limits(max_connections=len(sessions))) as http:

        async def call(session: str) -> None:
            message = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}
            answered = await http.post(url, json=message, headers={**HEADERS, "mcp-session-id": session})
            assert answered.status_code == 200, answered.text

        await asyncio.gather(*(call(session) for session in sessions))


def opening_20(args: list[str], warm: int, runs: int) -> float:
    times = []
    for _ in range(runs):
        guard = Guard(*args)
        try:
            if warm:
                assert guard.warm_ready.wait(WAIT_S), "the warm pool did not fill"
            else:
                time.sleep(2.0)  # as long for the guard to settle (a shared upstream starts with the guard)
            taken, _ = asyncio.run(open_sessions(guard.url, 20))
            times.append(taken)
        finally:
            guard.stop()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    print(f"machine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}; upstream: dual_era.py")
    for label, args, warm in (
        ("per-session, cold", ["--upstream-sessions", "per-session"], 0),
        ("per-session, --warm 20", ["--upstream-sessions", "per-session", "--warm", "20"], 20),
        ("per-identity", ["--upstream-sessions", "per-identity"], 0),
        ("shared", ["--upstream-sessions", "shared"], 0),
    ):
        print(f"opening 20 sessions at once, {label}: {opening_20(args, warm, runs):.3f} s (median of {runs})")
    guard = Guard("--upstream-sessions", "shared")
    try:
        idle_rss = guard.rss_mib()
        _, sessions = asyncio.run(open_sessions(guard.url, 100))
        asyncio.run(call_in_each(guard.url, sessions))
        print(
            f"100 open sessions on a shared upstream (a call made in each): guard RSS {guard.rss_mib():.0f} MiB "
            f"(idle {idle_rss:.0f} MiB), upstream processes {len(children(guard.process.pid))}"
        )
    finally:
        guard.stop()


if __name__ == "__main__":
    main()
