"""Shared fixtures: the guard as a real subprocess, free ports, the third-party peer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUARD = [sys.executable, "-m", "guard"]
# How long any single wait in a test may take before it fails rather than hangs.
WAIT_S = 30.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def everything() -> list[str]:
    """The command that starts @modelcontextprotocol/server-everything over stdio (installed by scripts/test)."""
    binary = Path(os.environ.get("GUARD_TEST_EVERYTHING", ROOT / ".peers/node_modules/.bin/mcp-server-everything"))
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run scripts/install-test-deps (or scripts/test) first")
    return [str(binary), "stdio"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GuardProcess:
    """`guard run --listen` as a subprocess; `url` is ready once the fixture returns."""

    process: subprocess.Popen[str]
    url: str
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)


def start_http_guard(args: list[str], port: int | None = None, env: dict[str, str] | None = None) -> GuardProcess:
    """Start `guard run --listen 127.0.0.1:PORT ARGS` and wait (bounded) until it accepts connections."""
    port = port or free_port()
    process = subprocess.Popen(
        [*GUARD, "run", "--listen", f"127.0.0.1:{port}", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    guard = GuardProcess(process, f"http://127.0.0.1:{port}/mcp")
    ready = threading.Event()

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            guard.stderr_lines.append(line.rstrip())
            if "Uvicorn running on" in line:
                ready.set()
        ready.set()  # exited: let the waiter see it

    threading.Thread(target=read_stderr, daemon=True).start()
    if not ready.wait(WAIT_S) or process.poll() is not None:
        process.kill()
        raise AssertionError(f"guard did not start listening:\n{guard.stderr}")
    return guard


def stop(guard: GuardProcess) -> None:
    guard.process.terminate()
    try:
        guard.process.wait(WAIT_S)
    except subprocess.TimeoutExpired:
        guard.process.kill()
        guard.process.wait(WAIT_S)


@pytest.fixture
def http_guard() -> Iterator[Callable[..., GuardProcess]]:
    """`http_guard(args, port=None, env=None)` starts a listening guard; all are stopped after the test."""
    started: list[GuardProcess] = []

    def start(args: list[str], port: int | None = None, env: dict[str, str] | None = None) -> GuardProcess:
        guard = start_http_guard(args, port, env)
        started.append(guard)
        return guard

    yield start
    for guard in started:
        stop(guard)
