"""A real `guard run` process over stdio, spoken to in raw JSON-RPC lines (so the wire format itself is
checked): used by the end-to-end tests (enforcement, payments, reconciliation)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from tests.conftest import GUARD, INITIALIZE, WAIT_S

JSON = dict[str, Any]


class RawGuard:
    """`guard run --policy P --ledger tmp/ledger.db --session S [extra] -- upstream` over stdio, spoken to
    one JSON-RPC line at a time. Every wait is bounded by WAIT_S."""

    def __init__(
        self,
        tmp: Path,
        policy: Path,
        *,
        upstream: list[str],
        session: str = "s1",
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        ledger: str | None = None,
    ) -> None:
        self.ledger: Path | str = ledger or tmp / "ledger.db"  # a PostgreSQL URL, or the SQLite file
        self.policy = policy
        command = [*GUARD, "run", "--policy", str(policy), "--ledger", str(self.ledger), "--session", session, *extra]
        self.process = subprocess.Popen(
            [*command, "--", *upstream],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        self.stderr: list[str] = []
        self.stderr_events: queue.Queue[str] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self._ids = iter(range(1, 1_000_000))
        self.notifications: list[JSON] = []  # messages that answer no request, kept aside
        self._early: dict[Any, bytes] = {}  # answers that came before the one being waited for
        self.request("initialize", cast(JSON, INITIALIZE["params"]))
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.stderr.append(line)
            self.stderr_events.put(line)

    def send(self, message: JSON) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def _send_request(self, method: str, params: JSON) -> int:
        request_id = next(self._ids)
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return request_id

    def _next(self, wanted: Callable[[JSON], bool]) -> bytes:
        """The next line from the guard that is `wanted`; the others are kept aside (answers by id)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            message = json.loads(line)
            if wanted(message):
                return line
            if "method" in message:
                self.notifications.append(message)
            else:
                self._early[message.get("id")] = line

    def _answer(self, request_id: int) -> bytes:
        """The raw line answering `request_id`."""
        if request_id in self._early:
            return self._early.pop(request_id)
        return self._next(lambda message: "method" not in message and message.get("id") == request_id)

    def raw_request(self, method: str, params: JSON | None = None) -> bytes:
        """Send a request; return the raw bytes of its answer line (notifications are kept aside)."""
        return self._answer(self._send_request(method, params or {}))

    def request(self, method: str, params: JSON | None = None) -> JSON:
        return json.loads(self.raw_request(method, params))  # type: ignore[no-any-return]

    def call(self, name: str, arguments: JSON | None = None, /, *, meta: JSON | None = None, **named: Any) -> JSON:
        """A tools/call, its arguments as a dict or as keywords; its result (a denial or the upstream's answer)."""
        params: JSON = {"name": name, "arguments": {**(arguments or {}), **named}}
        if meta is not None:
            params["_meta"] = meta
        answer = self.request("tools/call", params)
        assert "result" in answer, answer
        return answer["result"]  # type: ignore[no-any-return]

    def call_all(self, calls: list[tuple[str, JSON]]) -> list[JSON]:
        """Send every call before reading any answer (distinct ids, all in flight at once)."""
        ids = [self._send_request("tools/call", {"name": name, "arguments": args}) for name, args in calls]
        answers = [json.loads(self._answer(request_id)) for request_id in ids]
        for answer in answers:
            assert "result" in answer, answer
        return [answer["result"] for answer in answers]

    def wait_for_notification(self, method: str) -> JSON:
        """The first notification `method` (taken from those kept aside, else waited for)."""
        for message in self.notifications:
            if message.get("method") == method:
                self.notifications.remove(message)
                return message
        return json.loads(self._next(lambda message: message.get("method") == method))  # type: ignore[no-any-return]

    def wait_for_stderr(self, text: str) -> str:
        """The first stderr line containing `text` (waiting for it)."""
        for line in self.stderr:
            if text in line:
                return line
        deadline = time.monotonic() + WAIT_S
        while True:
            line = self.stderr_events.get(timeout=max(0.0, deadline - time.monotonic()))
            if text in line:
                return line

    def stop(self) -> None:
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
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()
