"""A real `guard run --listen` process spoken to as an attacker would: raw HTTP (httpx, raw sockets), no MCP SDK
client. It counts the guard's upstream processes (its children) and the bytes it logs; every wait is bounded by
WAIT_S."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import GUARD, INITIALIZE, ROOT, WAIT_S, free_port
from tests.proxy.processes import children

JSON = dict[str, Any]

UPSTREAMS = ROOT / "tests" / "upstreams"
DUAL_ERA = [sys.executable, str(UPSTREAMS / "dual_era.py")]
FAKE_402MCP = [sys.executable, str(UPSTREAMS / "fake_402mcp.py")]
PAUSED_402MCP = [sys.executable, str(Path(__file__).parent / "paused_402mcp.py")]

# What an honest handshake-era client sends with every POST.
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
# The 2026-07-28 per-request envelope.
ENVELOPE = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "attacker", "version": "1"},
}


def modern_headers(method: str) -> dict[str, str]:
    return {**HEADERS, "mcp-protocol-version": "2026-07-28", "mcp-method": method}


def modern_request(request_id: Any, method: str, params: JSON | None = None) -> JSON:
    return {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**(params or {}), "_meta": ENVELOPE}}


def answers(response: httpx.Response) -> list[JSON]:
    """The JSON-RPC messages of a response: its JSON body, or each SSE event's data."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:") and line[5:]]
    return [response.json()] if response.content else []


def error_of(response: httpx.Response) -> JSON:
    """The JSON-RPC error a refusal carries."""
    [message] = answers(response)
    assert "error" in message, message
    return message["error"]  # type: ignore[no-any-return]


class HttpGuard:
    """`guard run --listen 127.0.0.1:PORT --ledger tmp/ledger.db [args] -- upstream`."""

    def __init__(self, tmp: Path, args: list[str], upstream: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.ledger = tmp / "ledger.db"
        command = [*GUARD, "run", "--listen", f"127.0.0.1:{self.port}", "--ledger", str(self.ledger), *args]
        self.process = subprocess.Popen(
            [*command, "--", *upstream],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.stderr: list[str] = []
        self.log_bytes = 0
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        self.http = httpx.Client(timeout=WAIT_S)
        self.wait_for_stderr("Uvicorn running on")

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            self.log_bytes += len(raw)
            line = raw.decode(errors="replace").rstrip()
            self.stderr.append(line)
            self._lines.put(line)
        self._lines.put("")  # the guard exited

    def wait_for_stderr(self, text: str, count: int = 1) -> list[str]:
        """The stderr lines (from the start) containing `text`, once there are `count` of them."""
        deadline = time.monotonic() + WAIT_S
        while len(found := [line for line in list(self.stderr) if text in line]) < count:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line or self.process.poll() is None, "the guard exited:\n" + "\n".join(self.stderr)
        return found

    def upstreams(self) -> list[int]:
        """The guard's live child processes: its stdio upstreams."""
        return children(self.process.pid)

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def post(self, message: Any, session: str | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        sent = {**HEADERS, **({"mcp-session-id": session} if session else {}), **(headers or {})}
        return self.http.post(self.url, content=json.dumps(message).encode(), headers=sent)

    def initialize(self, headers: dict[str, str] | None = None) -> str:
        """Open a handshake-era session; its id."""
        opened = self.post(INITIALIZE, headers=headers)
        assert opened.status_code == 200, opened.text
        session = opened.headers["mcp-session-id"]
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"}, session, headers)
        return session

    def ping(self, session: str, request_id: Any = "ping", headers: dict[str, str] | None = None) -> None:
        """A ping in `session` is answered."""
        pinged = self.post({"jsonrpc": "2.0", "id": request_id, "method": "ping"}, session, headers)
        assert pinged.status_code == 200, pinged.text
        assert answers(pinged) == [{"jsonrpc": "2.0", "id": request_id, "result": {}}]

    def discover(self, request_id: Any = "discover", headers: dict[str, str] | None = None) -> None:
        """A 2026-07-28 `server/discover` (that era has no ping) is answered."""
        sent = {**modern_headers("server/discover"), **(headers or {})}
        found = self.http.post(self.url, json=modern_request(request_id, "server/discover"), headers=sent)
        assert found.status_code == 200, found.text
        [answer] = answers(found)
        assert answer["id"] == request_id and "supportedVersions" in answer["result"], answer

    def raw(self) -> socket.socket:
        """A plain TCP connection to the guard."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=WAIT_S)

    def stop(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(WAIT_S)
        self._reader.join(WAIT_S)
        assert self.process.stderr is not None
        self.process.stderr.close()


def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the guard sends on `connection` until it closes it (bounded by the socket's timeout)."""
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received
