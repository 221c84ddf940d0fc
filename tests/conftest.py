"""Shared fixtures: the guard as a real subprocess, free ports, the third-party peer."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

from ledgers import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent
GUARD = [sys.executable, "-m", "guard"]
# How long any single wait in a test may take before it fails rather than hangs.
WAIT_S = 30.0
# A raw handshake-era initialize request, for tests that speak JSON-RPC lines themselves.
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}


FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True, scope="session")
def _private_data_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Guards started by tests keep their default ledger in a temp dir, not in the user's home."""
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("data-home"))
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config-home"))
    # Guards that test the relay itself run under a policy that allows everything.
    os.environ["GUARD_POLICY"] = str(FIXTURES / "allow-all.yaml")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def everything() -> list[str]:
    """The stdio command of @modelcontextprotocol/server-everything (installed by scripts/test)."""
    binary = Path(os.environ.get("GUARD_TEST_EVERYTHING", ROOT / ".peers/node_modules/.bin/mcp-server-everything"))
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run scripts/install-test-deps (or scripts/test) first")
    return [str(binary), "stdio"]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """SQLAlchemy URL of the throwaway PostgreSQL server that scripts/test starts for the run. Each pytest-xdist
    worker gets a schema of its own (its connections' search_path), so workers never see each other's ledger."""
    url = os.environ.get("GUARD_TEST_POSTGRES_URL")
    if not url:
        pytest.fail(
            "GUARD_TEST_POSTGRES_URL is not set: run the tests with scripts/test, which starts a PostgreSQL "
            "server for them (or set it to postgresql+psycopg://... of a server of your own)"
        )
    worker_id = os.environ.get("PYTEST_XDIST_WORKER")
    if worker_id is None:  # not under xdist
        return url
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{worker_id}"'))
    engine.dispose()
    return (
        make_url(url).update_query_dict({"options": f"-csearch_path={worker_id}"}).render_as_string(hide_password=False)
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Spawned:
    """A subprocess whose stderr is collected; `url` is set for listening ones."""

    process: subprocess.Popen[str]
    url: str = ""
    stderr_lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def stderr(self) -> str:
        return "\n".join(self.stderr_lines)


GuardProcess = Spawned


def spawn_until(command: list[str], marker: str, env: dict[str, str] | None = None) -> Spawned:
    """Start `command` and wait (bounded) until its stderr shows `marker`."""
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    spawned = Spawned(process)
    ready = threading.Event()

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            spawned.stderr_lines.append(line.rstrip())
            if marker in line:
                ready.set()
        ready.set()  # it exited: let the waiter see that

    spawned.reader = threading.Thread(target=read_stderr, daemon=True)
    spawned.reader.start()
    if not ready.wait(WAIT_S) or process.poll() is not None:
        stop(spawned)
        raise AssertionError(f"{command[:4]} did not get ready:\n{spawned.stderr}")
    return spawned


def start_http_guard(args: list[str], port: int | None = None, env: dict[str, str] | None = None) -> Spawned:
    """Start `guard run --listen 127.0.0.1:PORT ARGS` and wait until it accepts connections."""
    port = port or free_port()
    guard = spawn_until([*GUARD, "run", "--listen", f"127.0.0.1:{port}", *args], "Uvicorn running on", env)
    guard.url = f"http://127.0.0.1:{port}/mcp"
    return guard


def stop(spawned: Spawned) -> None:
    """Terminate (then kill) the process and collect the rest of its stderr."""
    spawned.process.terminate()
    try:
        spawned.process.wait(WAIT_S)
    except subprocess.TimeoutExpired:
        spawned.process.kill()
        spawned.process.wait(WAIT_S)
    if spawned.reader is not None:
        spawned.reader.join(WAIT_S)
    assert spawned.process.stderr is not None
    spawned.process.stderr.close()


DUAL_ERA = [sys.executable, str(ROOT / "tests/upstreams/dual_era.py")]


@pytest.fixture
def dual_era_http() -> Iterator[Spawned]:
    """The dual-era test upstream served over streamable HTTP on a free port."""
    port = free_port()
    server = spawn_until([*DUAL_ERA, "--http", str(port)], "Uvicorn running on")
    server.url = f"http://127.0.0.1:{port}/mcp"
    yield server
    stop(server)


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


# --- ledgers: every ledger test runs on a real SQLite file and a real PostgreSQL server ----------------------


class FakeClock:
    """A clock tests move by hand, forwards or backwards."""

    def __init__(self, start: datetime = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)) -> None:
        self.moment = start

    def now(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def reset_postgres(url: str) -> None:
    """Drop the ledger's tables so a test starts from an empty database."""
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in [t for t in inspect(conn).get_table_names() if t.startswith("ledger_")]:
            conn.execute(text(f"DROP TABLE IF EXISTS {table} CASCADE"))
    engine.dispose()


def empty_postgres_ledger(url: str) -> None:
    """Empty the server's ledger so a test starts from an empty one: with this release's schema whole, its
    rows are deleted and its ids restarted (creating the schema again costs several times more); a ledger
    of any other schema, or missing a table, is dropped."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            tables = [t for t in inspect(conn).get_table_names() if t.startswith("ledger_")]
            found = None
            if set(tables) == set(SQLModel.metadata.tables):
                found = conn.execute(text("SELECT value FROM ledger_meta WHERE key = 'schema_version'")).scalar()
            if found != str(SCHEMA_VERSION):
                for table in tables:
                    conn.execute(text(f"DROP TABLE IF EXISTS {table} CASCADE"))
                return
            for table in tables:
                if table != "ledger_meta":
                    conn.execute(text(f"DELETE FROM {table}"))
            for sequence in conn.execute(
                text(
                    "SELECT sequencename FROM pg_sequences"
                    " WHERE schemaname = current_schema() AND sequencename LIKE 'ledger_%'"
                )
            ):
                conn.execute(text(f"ALTER SEQUENCE {sequence[0]} RESTART"))
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty ledger's URL: a new SQLite file in tmp_path, or the test PostgreSQL server's ledger emptied
    (this release's schema without rows, or no ledger tables)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url = str(request.getfixturevalue("postgres_url"))
    empty_postgres_ledger(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database's URL, without a single ledger table: for tests that create a ledger's schema
    themselves (an older release's) or watch it being created."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url = str(request.getfixturevalue("postgres_url"))
    reset_postgres(url)
    return url
