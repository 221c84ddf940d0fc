"""HTTP front under attack: what does a hostile client cost a listening guard?

Each figure comes from a fresh `guard run --listen 127.0.0.1:PORT -- python bench/trivial_upstream.py` (no token:
the loopback guard a web page can reach), its stderr going to a temp file:

- body:      the guard's peak RSS (VmHWM) after a 100 MB POST with Content-Length, then (another guard) after a
             400 MB chunked POST; the status each got and how much of the 400 MB the guard let the client send.
- refused:   upstream processes (the guard's live children) right after 40 refused requests (bad Origin, CORS
             preflight, GET without a session: what a web page can make a browser send).
- sessions:  100 `initialize` attempts with `--max-sessions 16`: sessions opened, 503s, upstream processes and
             the RSS of the guard and its upstreams together.
- flood:     `--seconds` (default 20) of 4 threads opening connections that send garbage, and one thread keeping
             up to 1000 connections that never finish their headers: log bytes written, the guard's peak of open
             file descriptors, and its open descriptors 12 s after the flood (past the default 10 s read timeout).

Run from the repository root (a 2-core machine: the flood competes with the guard for CPU):

    .venv/bin/python bench/http_attacks.py                # all four
    .venv/bin/python bench/http_attacks.py body flood     # some
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = [sys.executable, str(ROOT / "bench" / "trivial_upstream.py")]
POLICY = ROOT / "bench" / "policy-allow.yaml"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = (
    b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",'
    b'"capabilities":{},"clientInfo":{"name":"bench","version":"1"}}}'
)
MB = 1000 * 1000


class Guard:
    def __init__(self, *args: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="http-attacks-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.log = self.dir / "stderr.log"
        command = [sys.executable, "-m", "guard", "run", "--listen", f"127.0.0.1:{self.port}", "--policy", str(POLICY)]
        command += ["--ledger", str(self.dir / "ledger.db"), *args, "--", *UPSTREAM]
        env = {**os.environ, "XDG_DATA_HOME": str(self.dir)}
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), env=env)
        deadline = time.monotonic() + 30
        while b"Uvicorn running on" not in self.log.read_bytes():
            assert time.monotonic() < deadline and self.process.poll() is None, self.log.read_text()
            time.sleep(0.05)

    def status(self, field: str, pid: int | None = None) -> int:
        """A `kB` field of /proc/PID/status (VmHWM, VmRSS), in bytes."""
        for line in Path(f"/proc/{pid or self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def children(self) -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
                except OSError:
                    continue
                if int(ppid) == self.process.pid and state != "Z":
                    found.append(int(entry.name))
        return found

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def log_bytes(self) -> int:
        return self.log.stat().st_size

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def mib(n: int) -> str:
    return f"{n / 1024 / 1024:.0f} MiB"


def body() -> None:
    guard = Guard()
    try:
        before = guard.status("VmHWM")
        with httpx.Client(timeout=120) as http:
            answer = http.post(guard.url, content=b" " * (100 * MB), headers=HEADERS)
        print(f"body: 100 MB with Content-Length: HTTP {answer.status_code}; guard peak RSS {mib(before)} -> ", end="")
        print(mib(guard.status("VmHWM")))
    finally:
        guard.stop()
    guard = Guard()
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        chunk = b" " * (1024 * 1024)
        while sent < 400 * MB:
            sent += len(chunk)
            yield chunk

    try:
        before = guard.status("VmHWM")
        with httpx.Client(timeout=120) as http:
            answer = http.post(guard.url, content=chunks(), headers=HEADERS)
        print(
            f"body: 400 MB chunked: HTTP {answer.status_code} after {mib(sent)} sent; guard peak RSS {mib(before)}",
            end="",
        )
        print(f" -> {mib(guard.status('VmHWM'))}")
    finally:
        guard.stop()


def refused() -> None:
    guard = Guard()
    try:
        evil = {"Origin": "http://evil.example"}
        with httpx.Client(timeout=60) as http:
            statuses = []
            for n in range(40):
                if n % 3 == 0:
                    statuses.append(http.post(guard.url, content=INITIALIZE, headers={**HEADERS, **evil}).status_code)
                elif n % 3 == 1:
                    preflight = {**evil, "Access-Control-Request-Method": "POST"}
                    statuses.append(http.options(guard.url, headers=preflight).status_code)
                else:
                    statuses.append(http.get(guard.url, headers={"Accept": "text/event-stream"}).status_code)
        print(f"refused: 40 requests ({sorted(set(statuses))}): {len(guard.children())} upstream processes right after")
    finally:
        guard.stop()


def sessions() -> None:
    guard = Guard("--max-sessions", "16")
    try:
        with httpx.Client(timeout=60) as http:
            statuses = [http.post(guard.url, content=INITIALIZE, headers=HEADERS).status_code for _ in range(100)]
        children = guard.children()
        rss = guard.status("VmRSS") + sum(guard.status("VmRSS", pid) for pid in children)
        print(
            f"sessions: 100 attempts with --max-sessions 16: {statuses.count(200)} opened, {statuses.count(503)} "
            f"got 503; {len(children)} upstream processes; guard + upstreams RSS {mib(rss)}"
        )
    finally:
        guard.stop()


def flood(seconds: float) -> None:
    guard = Guard()
    stop = threading.Event()
    held: list[socket.socket] = []

    def garbage() -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", guard.port), timeout=5) as s:
                    s.sendall(b"\x16\x03\x01 not http\r\n\r\n")
                    while s.recv(65536):
                        pass
            except OSError:
                pass

    def slowloris() -> None:
        while not stop.is_set():
            if len(held) < 1000:
                try:
                    s = socket.create_connection(("127.0.0.1", guard.port), timeout=5)
                    s.sendall(f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{guard.port}\r\nX-a: ".encode())
                    held.append(s)
                except OSError:
                    pass
            else:
                time.sleep(0.01)

    try:
        before, peak_fds = guard.log_bytes(), guard.fds()
        threads = [threading.Thread(target=garbage) for _ in range(4)] + [threading.Thread(target=slowloris)]
        for thread in threads:
            thread.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            peak_fds = max(peak_fds, guard.fds())
            time.sleep(0.25)
        stop.set()
        for thread in threads:
            thread.join()
        written = guard.log_bytes() - before
        time.sleep(12)
        print(
            f"flood: {seconds:g} s: {written} log bytes ({written / seconds:.0f}/s); guard fds peak {peak_fds}, "
            f"{guard.fds()} 12 s later with {len(held)} slowloris sockets still open on the client side"
        )
    finally:
        for s in held:
            s.close()
        guard.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    figures = ["body", "refused", "sessions", "flood"]
    parser.add_argument("figures", nargs="*", help=f"some of: {', '.join(figures)} (default: all)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the flood lasts")
    options = parser.parse_args()
    if unknown := set(options.figures) - set(figures):
        parser.error(f"unknown figures: {', '.join(sorted(unknown))}")
    for figure in options.figures or figures:
        if figure == "flood":
            flood(options.seconds)
        else:
            {"body": body, "refused": refused, "sessions": sessions}[figure]()


if __name__ == "__main__":
    main()
