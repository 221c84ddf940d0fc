"""What the HTTP benchmarks share: a lean MCP client over streamable HTTP, and servers run as processes.

The client is raw JSON-RPC over httpx (one `httpx.AsyncClient`, so one connection, per MCP session), the
2025-11-25 handshake era: `initialize`, `notifications/initialized`, then requests. It reads an answer sent
as JSON or as an SSE stream alike (guard and the SDK's own server answer with SSE; mcp-proxy with JSON).
It is the same client in front of every server measured, and costs less CPU than the SDK's `ClientSession`
(a 2-core machine runs the client, the proxy and the upstreams at once).

`Served` starts a command that listens on a port (guard, mcp-proxy, an upstream over HTTP), waits for the
port to accept connections, and reads the memory of the process and of its descendants from /proc.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

JSON = dict[str, Any]
PROTOCOL = "2025-11-25"
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


class McpError(Exception):
    """An answer that is not the one the benchmark expects: a JSON-RPC error, an HTTP status, a bad body."""


def _answer(response: httpx.Response, request_id: int) -> JSON:
    """The JSON-RPC answer to `request_id` in a JSON body or an SSE stream."""
    if response.status_code != 200:
        raise McpError(f"HTTP {response.status_code}: {response.text[:300]}")
    if response.headers.get("content-type", "").startswith("application/json"):
        candidates = [json.loads(response.content)]
    else:
        candidates = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    for message in candidates:
        if isinstance(message, dict) and message.get("id") == request_id:
            if "error" in message:
                raise McpError(f"JSON-RPC error {message['error']}")
            return message["result"]  # type: ignore[no-any-return]
    raise McpError(f"no answer to request {request_id} in {response.text[:300]!r}")


class Session:
    """One MCP client session over streamable HTTP: `await open()`, `await call(tool, args)`, `await close()`."""

    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout: float = 120.0) -> None:
        self.url = url
        self.http = httpx.AsyncClient(
            timeout=timeout, limits=httpx.Limits(max_connections=4, max_keepalive_connections=4)
        )
        self.headers = {**HEADERS, **(headers or {})}
        self.ids = itertools.count(1)

    async def open(self) -> JSON:
        init = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": PROTOCOL,
                "capabilities": {},
                "clientInfo": {"name": "bench", "version": "1"},
            },
        }
        response = await self.http.post(self.url, content=json.dumps(init), headers=self.headers)
        result = _answer(response, 0)
        session_id = response.headers.get("mcp-session-id")
        if session_id:
            self.headers["mcp-session-id"] = session_id
        self.headers["mcp-protocol-version"] = result["protocolVersion"]
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        sent = await self.http.post(self.url, content=json.dumps(note), headers=self.headers)
        if sent.status_code not in (200, 202):
            raise McpError(f"notifications/initialized: HTTP {sent.status_code}")
        return result

    async def call(self, tool: str, arguments: JSON | None = None) -> JSON:
        """A `tools/call`'s result (a tool's own error, `isError`, is a result: the caller reads it)."""
        request_id = next(self.ids)
        request = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments or {}},
        }
        return _answer(await self.http.post(self.url, content=json.dumps(request), headers=self.headers), request_id)

    async def close(self) -> None:
        """End the session (DELETE, as a client that says goodbye does), then the connection."""
        try:
            if "mcp-session-id" in self.headers:
                await self.http.delete(self.url, headers=self.headers)
        except httpx.HTTPError:
            pass
        finally:
            await self.http.aclose()


def machine() -> dict[str, Any]:
    """What the figures were measured on: cores, CPU model, Python, the MCP SDK, the load average now."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "mcp": version("mcp"),
        "platform": platform.platform(),
        "load_before": os.getloadavg(),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A command serving HTTP on 127.0.0.1:`port` (its stderr in a temp file), started and ready."""

    def __init__(
        self, name: str, command: list[str], port: int, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}/mcp"
        self.dir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.log = self.dir / "stderr.log"
        with self.log.open("wb") as err:
            self.process = subprocess.Popen(
                command,
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env={**os.environ, **(env or {})},
            )
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not listen on {port} within 60 s") from None
                time.sleep(0.05)

    def descendants(self) -> list[int]:
        """Live processes below this one (its upstreams), from /proc."""
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
                except (OSError, ValueError):
                    continue
                if state != "Z":
                    parents[int(entry.name)] = int(ppid)
        found, frontier = [], {self.process.pid}
        while frontier:
            frontier = {pid for pid, ppid in parents.items() if ppid in frontier}
            found.extend(frontier)
        return found

    def rss(self, pid: int | None = None) -> int:
        """VmRSS of `pid` (default: this process), in bytes; 0 once gone."""
        try:
            for line in Path(f"/proc/{pid or self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self) -> None:
        """Terminate the server, then any of its upstreams it left behind (counted first: `left` after)."""
        below = self.descendants()
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        for pid in below:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
