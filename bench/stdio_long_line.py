"""Memory of a stdio guard fed one very long line: does its bounded reader keep memory bounded?

Starts `python -m guard run --policy bench/policy-allow.yaml --ledger <tmp> [--max-message-size S] --
python bench/trivial_upstream.py`, initializes, then writes ONE line of JSON of `--mb` MB (default 100; a
`ping` whose params hold one long string) in 1 MiB writes, then a ping. It reports what the guard answered
to the long line and to the ping, and the guard's resident memory (VmRSS and its peak, VmHWM, from
/proc/<pid>/status): after the handshake, the peak while the line was read, and after it.

Run from the repository root (Linux: it reads /proc):

    .venv/bin/python bench/stdio_long_line.py
    .venv/bin/python bench/stdio_long_line.py --mb 500 --max-message-size 1MiB
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1024 * 1024
GUARD = [sys.executable, "-m", "guard", "run"]
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}},
}


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of `pid`, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="length of the long line, in MB (10^6 bytes)")
    parser.add_argument("--max-message-size", help="passed to guard run (default: guard's own, 16MiB)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        limit = ["--max-message-size", args.max_message_size] if args.max_message_size else []
        upstream = [sys.executable, str(ROOT / "bench/trivial_upstream.py")]
        ledger = str(Path(tmp) / "ledger.db")
        guard = subprocess.Popen(
            [*GUARD, "--policy", str(ROOT / "bench/policy-allow.yaml"), "--ledger", ledger, *limit, "--", *upstream],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        assert guard.stdin is not None and guard.stdout is not None

        def send(message: dict[str, object]) -> None:
            guard.stdin.write(json.dumps(message).encode() + b"\n")  # type: ignore[union-attr]
            guard.stdin.flush()  # type: ignore[union-attr]

        send(INITIALIZE)
        guard.stdout.readline()
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send({"jsonrpc": "2.0", "id": 2, "method": "ping"})
        guard.stdout.readline()
        before = memory_kib(guard.pid)

        total = args.mb * 1_000_000
        head = b'{"jsonrpc":"2.0","id":3,"method":"ping","params":{"pad":"'
        guard.stdin.write(head)
        chunk = b"x" * MIB
        written = len(head)
        while written < total:
            piece = chunk[: min(MIB, total - written)]
            guard.stdin.write(piece)
            written += len(piece)
        guard.stdin.write(b'"}}\n')
        guard.stdin.flush()
        send({"jsonrpc": "2.0", "id": 4, "method": "ping"})
        answers = [json.loads(guard.stdout.readline()) for _ in range(2)]
        after = memory_kib(guard.pid)
        guard.stdin.close()
        guard.wait(30)

    print(f"long line: {written + 4:,} bytes; guard answered: {answers[0]}")
    print(f"then ping: {answers[1]}")
    rss, peak = before["VmRSS"] / 1024, before["VmHWM"] / 1024
    print(f"guard RSS after the handshake: {rss:.1f} MiB (peak so far {peak:.1f} MiB)")
    print(f"guard peak RSS while reading the line: {after['VmHWM'] / 1024:.1f} MiB")
    print(f"guard RSS after: {after['VmRSS'] / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
