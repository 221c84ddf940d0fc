"""A real `guard run` over stdio, spoken to as an attacker would: raw bytes in, every line out kept in order.

Unlike tests/rawguard.py (one answer per id, as an honest client expects), nothing here assumes the guard
behaves: two answers to one id, an answer nobody asked for, a line that is not JSON are all kept, and the
guard's stderr arrives on the same event queue, so a test can wait for "the upstream started paying" and
"an answer came" alike. Every wait is bounded by WAIT_S.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ledgers import Amount, Budget, Ledger
from tests.conftest import GUARD, INITIALIZE, ROOT, WAIT_S

JSON = dict[str, Any]

FAKE_402MCP = [sys.executable, str(ROOT / "tests/upstreams/fake_402mcp.py")]
RAW_UPSTREAM = [sys.executable, str(Path(__file__).with_name("raw_upstream.py"))]

# A 402-mcp policy: l402-fetch pays (at most 10 sat a call, reserved at that), 100 sat a session.
L402_POLICY = """\
version: 1
default: deny
budgets:
  - name: per-session
    limit: 100 sat
    scope: session
tools:
  l402-fetch:
    pays: true
    max_price: 10 sat
"""
SESSION_BUDGET = Budget("per-session", Amount(100, "sat"), "session:s1")


class StdioGuard:
    """`guard run --policy P --ledger L --session s1 [extra] -- upstream` over stdio, initialized.

    `state` (for a fake upstream) goes to the FAKE_STATE file; the raw upstream records tool runs in `runs`."""

    def __init__(
        self,
        tmp: Path,
        policy: str,
        upstream: list[str],
        *,
        state: JSON | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.ledger = tmp / "ledger.db"
        self.state_file = tmp / "fake-state.json"
        self.runs_file = tmp / "raw-upstream-runs.jsonl"
        policy_file = tmp / "policy.yaml"
        policy_file.write_text(policy)
        if state is not None:
            self.state_file.write_text(json.dumps(state))
        env = {**os.environ, "FAKE_STATE": str(self.state_file), "RAW_UPSTREAM_RUNS": str(self.runs_file)}
        command = [*GUARD, "run", "--policy", str(policy_file), "--ledger", str(self.ledger), "--session", "s1"]
        self.process = subprocess.Popen(
            [*command, *extra, "--", *upstream],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        # ("out", message or the raw line when it is not JSON) and ("err", text), in arrival order.
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.out: list[Any] = []  # every line the guard wrote on stdout, parsed
        self.err: list[str] = []  # every line it wrote on stderr
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, "out"), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, "err"), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self._ids = itertools.count(1)
        self.request("initialize", INITIALIZE["params"])  # type: ignore[arg-type]
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _read(self, pipe: Any, kind: str) -> None:
        for raw in pipe:
            if kind == "err":
                self._events.put((kind, raw.decode(errors="replace").rstrip()))
                continue
            try:
                self._events.put((kind, json.loads(raw)))
            except ValueError:
                self._events.put((kind, raw))

    # writing

    def write(self, raw: bytes) -> None:
        """Bytes as they are (add the newline yourself)."""
        assert self.process.stdin is not None
        self.process.stdin.write(raw)
        self.process.stdin.flush()

    def send(self, message: Any) -> None:
        self.write(json.dumps(message).encode() + b"\n")

    def next_id(self) -> str:
        """An id no hostile message of the tests uses."""
        return f"test-{next(self._ids)}"

    def send_request(self, method: str, params: JSON | None = None, request_id: Any = None) -> Any:
        """Send a request (a fresh id unless given); return its id."""
        request_id = self.next_id() if request_id is None else request_id
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}})
        return request_id

    def call(self, name: str, arguments: JSON, request_id: Any = None) -> Any:
        """Send a tools/call; return its id."""
        return self.send_request("tools/call", {"name": name, "arguments": arguments}, request_id)

    # reading

    def wait_until(self, done: Callable[[], bool]) -> None:
        """Take what the guard writes until `done()` holds (at most WAIT_S)."""
        deadline = time.monotonic() + WAIT_S
        while not done():
            kind, item = self._events.get(timeout=max(0.0, deadline - time.monotonic()))
            (self.out if kind == "out" else self.err).append(item)

    def answers(self, request_id: Any) -> list[JSON]:
        """Every answer seen so far to `request_id` (a JSON-RPC response or error)."""
        return [m for m in self.out if isinstance(m, dict) and "method" not in m and m.get("id") == request_id]

    def answer(self, request_id: Any) -> JSON:
        """The one answer to `request_id` (waiting for it)."""
        self.wait_until(lambda: bool(self.answers(request_id)))
        [answer] = self.answers(request_id)
        return answer

    def request(self, method: str, params: JSON | None = None) -> JSON:
        return self.answer(self.send_request(method, params))

    def stderr_count(self, text: str) -> int:
        return sum(text in line for line in self.err)

    def ping(self) -> None:
        """The guard (and its upstream) still answer."""
        request_id = self.send_request("ping")
        assert self.answer(request_id) == {"jsonrpc": "2.0", "id": request_id, "result": {}}

    def stop(self) -> int:
        """Close stdin (the client leaves), wait for the guard to exit; its status."""
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(WAIT_S)
        for reader in self._readers:
            reader.join(WAIT_S)
        while not self._events.empty():
            kind, item = self._events.get_nowait()
            (self.out if kind == "out" else self.err).append(item)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()
        return self.process.returncode

    # what left the wallet, and what the ledger counts

    def fake_state(self) -> JSON:
        return json.loads(self.state_file.read_text())  # type: ignore[no-any-return]

    def paid_sat(self) -> int:
        """What the fake 402-mcp says left its wallet."""
        return sum(int(p["amount"]) for p in self.fake_state()["payments"])

    def counted_sat(self) -> int:
        """What the ledger counts against the session budget: spent, held and in doubt."""
        with Ledger.open(self.ledger, read_only=True) as ledger:
            usage = ledger.usage(SESSION_BUDGET)
        return usage.spent + usage.held

    def runs(self) -> list[JSON]:
        """The tools the raw upstream ran."""
        if not self.runs_file.exists():
            return []
        return [json.loads(line) for line in self.runs_file.read_text().splitlines()]
