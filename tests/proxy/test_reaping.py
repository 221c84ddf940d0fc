"""No leftovers: the upstream processes of closed (HTTP DELETE), idle-expired and stopped sessions are reaped in
every `--upstream-sessions` mode, and `--max-sessions` and `--session-idle` hold in each.

A real `guard run --listen` with a shell upstream (`tests/upstreams/quick_upstream.sh`: it starts in about a
millisecond), its upstream processes counted as its live children in /proc. Waiting for a process to be reaped
is a bounded poll of /proc (nothing announces it).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import GUARD, INITIALIZE, ROOT, WAIT_S
from tests.hostile.http_guard import HEADERS, HttpGuard, error_of
from tests.proxy.processes import children

QUICK = [str(ROOT / "tests" / "upstreams" / "quick_upstream.sh")]
MODES = ["per-session", "per-identity", "shared"]
# Sessions opened and closed in the leftovers test (each its own process per-session; on one shared process,
# fewer do: they start nothing), and how many at once.
SESSIONS = {"per-session": 1000, "per-identity": 200, "shared": 200}
AT_ONCE = 8


@pytest.fixture
def guards(tmp_path: Path) -> Iterator[Callable[..., HttpGuard]]:
    started: list[HttpGuard] = []

    def start(*args: str) -> HttpGuard:
        guard = HttpGuard(tmp_path / str(len(started)), list(args), QUICK)
        started.append(guard)
        return guard

    for index in range(4):
        (tmp_path / str(index)).mkdir()
    yield start
    for guard in started:
        guard.stop()


def upstreams_once_settled(guard: HttpGuard, expected: int) -> list[int]:
    """The guard's upstream processes, once there are `expected` of them (or WAIT_S has passed)."""
    deadline = time.monotonic() + WAIT_S
    while len(found := children(guard.process.pid)) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def open_and_close(url: str, count: int) -> None:
    with httpx.Client(timeout=WAIT_S) as http:
        for _ in range(count):
            opened = http.post(url, json=INITIALIZE, headers=HEADERS)
            assert opened.status_code == 200, opened.text
            session = {**HEADERS, "mcp-session-id": opened.headers["mcp-session-id"]}
            http.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session)
            closed = http.delete(url, headers=session)
            assert closed.status_code == 200, closed.text


@pytest.mark.parametrize("mode", MODES)
def test_a_thousand_sessions_opened_and_closed_leave_no_upstream_process(
    guards: Callable[..., HttpGuard], mode: str
) -> None:
    guard = guards("--upstream-sessions", mode, "--session-idle", "2s")
    with ThreadPoolExecutor(AT_ONCE) as pool:
        for done in [pool.submit(open_and_close, guard.url, SESSIONS[mode] // AT_ONCE) for _ in range(AT_ONCE)]:
            done.result()
    if mode != "per-session":  # the shared upstream outlives its last client by --session-idle
        assert len(children(guard.process.pid)) <= 1
        guard.wait_for_stderr("closed (0 clients on it)")
    assert upstreams_once_settled(guard, 0) == []


@pytest.mark.parametrize("mode", MODES)
def test_max_sessions_holds_in_every_mode(guards: Callable[..., HttpGuard], mode: str) -> None:
    guard = guards("--upstream-sessions", mode, "--max-sessions", "2")
    guard.initialize()
    guard.initialize()
    refused = guard.post(INITIALIZE)
    assert refused.status_code == 503
    assert "(--max-sessions)" in error_of(refused)["message"]
    assert len(children(guard.process.pid)) == (2 if mode == "per-session" else 1)


@pytest.mark.parametrize("mode", MODES)
def test_an_idle_session_expires_and_its_upstream_is_reaped_in_every_mode(
    guards: Callable[..., HttpGuard], mode: str
) -> None:
    guard = guards("--upstream-sessions", mode, "--session-idle", "1s")
    session = guard.initialize()
    guard.ping(session)
    assert len(children(guard.process.pid)) == 1
    guard.wait_for_stderr("(--session-idle)")
    assert guard.post({"jsonrpc": "2.0", "id": 2, "method": "ping"}, session).status_code == 404
    assert upstreams_once_settled(guard, 0) == []
    # A new session after that gets a new upstream.
    guard.ping(guard.initialize())
    assert len(children(guard.process.pid)) == 1


def test_a_shared_upstream_carries_many_sessions_on_one_process_each_a_session_of_guards_own(
    guards: Callable[..., HttpGuard],
) -> None:
    guard = guards("--upstream-sessions", "shared")
    sessions = [guard.initialize() for _ in range(5)]
    for session in sessions:
        guard.ping(session)
    assert len(children(guard.process.pid)) == 1
    # guard's own sessions (what budgets, audit and freezes key on) are still one per client session.
    relayed = {line.split()[4] for line in guard.wait_for_stderr("relaying to", count=5)}
    assert relayed == set(sessions)


def test_per_identity_upstreams_are_one_per_identity(guards: Callable[..., HttpGuard], tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"alice": "alice-token-0123456789abcdef", "bob": "bob-token-0123456789abcdefgh"}')
    guard = guards("--upstream-sessions", "per-identity", "--tokens", str(tokens))
    for token in ("alice-token-0123456789abcdef", "bob-token-0123456789abcdefgh") * 2:
        auth = {"Authorization": f"Bearer {token}"}
        guard.ping(guard.initialize(auth), headers=auth)
    assert len(children(guard.process.pid)) == 2


def test_warm_upstreams_wait_ready_are_taken_and_replaced_and_none_outlive_the_guard(
    guards: Callable[..., HttpGuard],
) -> None:
    guard = guards("--upstream-sessions", "per-session", "--warm", "3")
    warm = upstreams_once_settled(guard, 3)
    assert len(warm) == 3
    session = guard.initialize()
    guard.ping(session)
    # The session took a warm one (no fourth process for it), and the pool started a replacement.
    in_use = upstreams_once_settled(guard, 4)
    assert len(in_use) == 4 and len(set(in_use) & set(warm)) == 3
    guard.stop()
    assert [pid for pid in in_use if alive(pid)] == []


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_warm_needs_per_session() -> None:
    done = subprocess.run(
        [*GUARD, "run", "--listen", "9", "--upstream-sessions", "shared", "--warm", "2", "--", *QUICK],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert done.returncode == 2
    assert "--warm 2: warm starts are for --upstream-sessions per-session" in done.stderr
