"""When the upstream fails, or a client is not allowed in, everyone gets a clear answer and nobody hangs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client, MCPError, StdioServerParameters

from tests.conftest import DUAL_ERA, GUARD, INITIALIZE, WAIT_S, Spawned, free_port, stop

pytestmark = pytest.mark.anyio

TOKEN = "s3cret-token-for-tests-0123456789"


def run_guard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GUARD, *args], capture_output=True, text=True, timeout=WAIT_S, stdin=subprocess.DEVNULL)


def call_through_stdio_guard(tool: str) -> tuple[subprocess.Popen[str], list[dict[str, Any]]]:
    """Start a stdio guard over the dual-era upstream, initialize, call `tool`; return the two answers."""
    guard = subprocess.Popen(
        [*GUARD, "run", "--", *DUAL_ERA],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert guard.stdin is not None and guard.stdout is not None
    for message in (
        INITIALIZE,
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": {}}},
    ):
        guard.stdin.write(json.dumps(message) + "\n")
    guard.stdin.flush()
    return guard, [json.loads(guard.stdout.readline()) for _ in range(2)]


def test_an_upstream_crash_mid_call_answers_the_call_and_the_stdio_guard_exits() -> None:
    guard, answers = call_through_stdio_guard("crash")
    _, stderr = guard.communicate(timeout=WAIT_S)

    error = answers[1]["error"]
    assert answers[1]["id"] == 2
    assert "exited with status 7" in error["message"]
    assert "simulated crash in the middle of a call" in error["message"]
    assert "dual_era.py" in error["message"]
    assert guard.returncode == 1
    assert "guard: error: upstream" in stderr and "exited with status 7" in stderr


async def test_an_upstream_crash_over_http_ends_only_that_session(http_guard: Callable[..., Spawned]) -> None:
    guard = http_guard(["--upstream-sessions", "per-session", "--", *DUAL_ERA])
    with anyio.fail_after(WAIT_S):
        async with Client(guard.url, mode="legacy") as doomed, Client(guard.url, mode="legacy") as bystander:
            with pytest.raises(MCPError, match="exited with status 7") as raised:
                await doomed.call_tool("crash", {})
            assert "simulated crash" in str(raised.value)
            # Every session has its own upstream process: the other one lives on.
            result = await bystander.call_tool("echo", {"text": "unharmed"})
            assert result.content[0].text == "unharmed"  # type: ignore[union-attr]


async def test_an_http_upstream_that_goes_away_fails_the_call_with_its_url(dual_era_http: Spawned) -> None:
    params = StdioServerParameters(
        command=GUARD[0], args=[*GUARD[1:], "run", "--upstream", dual_era_http.url], env=dict(os.environ)
    )
    with anyio.fail_after(WAIT_S):
        async with Client(params, mode="legacy") as client:
            await client.call_tool("echo", {"text": "before"})
            stop(dual_era_http)
            with pytest.raises(MCPError) as raised:
                await client.call_tool("echo", {"text": "after"})
    assert dual_era_http.url in str(raised.value)


def test_an_unreachable_upstream_url_stops_the_guard_at_start() -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    result = run_guard("run", "--upstream", url)
    assert result.returncode == 3
    assert f"guard: error: upstream {url} is unreachable" in result.stderr


def test_a_command_that_cannot_start_stops_the_guard_at_start() -> None:
    result = run_guard("run", "--", "no-such-mcp-server", "--flag")
    assert result.returncode == 3
    assert "cannot start upstream `no-such-mcp-server --flag`: command not found: no-such-mcp-server" in result.stderr


def test_an_upstream_that_exits_at_once_is_reported_with_its_status_and_stderr() -> None:
    script = "import sys; sys.stderr.write('missing P402_API_KEY\\n'); sys.exit(4)"
    result = subprocess.run(
        [*GUARD, "run", "--", sys.executable, "-c", script],
        input=json.dumps(INITIALIZE) + "\n",
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    assert result.returncode == 1
    assert "exited with status 4; stderr tail: missing P402_API_KEY" in result.stderr
    answer = json.loads(result.stdout.splitlines()[0])
    assert answer["id"] == 1 and "missing P402_API_KEY" in answer["error"]["message"]


def test_listening_beyond_loopback_without_a_token_is_refused() -> None:
    result = run_guard("run", "--listen", f"0.0.0.0:{free_port()}", "--", *DUAL_ERA)
    assert result.returncode == 2
    assert "refusing to serve a non-loopback address without a bearer token" in result.stderr


def test_bad_flags_are_named() -> None:
    assert "expected [HOST:]PORT" in run_guard("run", "--listen", "127.0.0.1:http", "--", "x").stderr
    assert "expected an http:// or https:// URL" in run_guard("run", "--upstream", "ftp://x").stderr
    assert "not both" in run_guard("run", "--upstream", "http://127.0.0.1:1/mcp", "--", "x").stderr
    assert "too short" in run_guard("run", "--listen", "9", "--token", "short", "--", "x").stderr


async def test_http_clients_need_the_bearer_token(http_guard: Callable[..., Spawned]) -> None:
    guard = http_guard(["--token", TOKEN, "--", *DUAL_ERA])
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        missing = await http.post(guard.url, json=INITIALIZE, headers=headers)
        wrong = await http.post(guard.url, json=INITIALIZE, headers={**headers, "Authorization": "Bearer nope"})
    assert missing.status_code == 401
    assert "missing `Authorization: Bearer <token>` header" in missing.json()["error"]["message"]
    assert wrong.status_code == 401
    assert wrong.json()["error"]["message"] == "Unauthorized: the bearer token is not valid"
    assert wrong.headers["www-authenticate"].startswith("Bearer")
    assert TOKEN not in guard.stderr

    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    authorized = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"})
    with anyio.fail_after(WAIT_S):
        async with (
            authorized,
            Client(streamable_http_client(guard.url, http_client=authorized), mode="legacy") as client,
        ):  # type: ignore[arg-type]
            result = await client.call_tool("echo", {"text": "let in"})
    assert result.content[0].text == "let in"  # type: ignore[union-attr]


async def test_a_session_answers_only_the_identity_that_opened_it(
    http_guard: Callable[..., Spawned], tmp_path: pytest.TempPathFactory
) -> None:
    tokens = tmp_path / "tokens.json"  # type: ignore[operator]
    tokens.write_text(json.dumps({"alice": TOKEN, "bob": TOKEN[::-1]}))
    guard = http_guard(["--tokens", str(tokens), "--", *DUAL_ERA])
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with httpx.AsyncClient(timeout=WAIT_S) as http:
        opened = await http.post(guard.url, json=INITIALIZE, headers={**headers, "Authorization": f"Bearer {TOKEN}"})
        session_id = opened.headers["mcp-session-id"]
        ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
        as_bob = await http.post(
            guard.url,
            json=ping,
            headers={**headers, "Authorization": f"Bearer {TOKEN[::-1]}", "mcp-session-id": session_id},
        )
    assert opened.status_code == 200
    assert as_bob.status_code == 404


def test_a_stdio_guard_stopped_by_sigterm_stops_its_upstream_too() -> None:
    guard, answers = call_through_stdio_guard("pid")
    upstream_pid = int(answers[1]["result"]["content"][0]["text"])

    guard.send_signal(signal.SIGTERM)
    _, stderr = guard.communicate(timeout=WAIT_S)

    assert guard.returncode == 0
    assert "stopping on SIGTERM" in stderr
    with pytest.raises(ProcessLookupError):
        os.kill(upstream_pid, 0)


async def test_an_upstream_crash_on_a_shared_upstream_ends_the_calls_of_every_session_on_it(
    http_guard: Callable[..., Spawned],
) -> None:
    guard = http_guard(["--upstream-sessions", "shared", "--", *DUAL_ERA])
    with anyio.fail_after(WAIT_S):
        async with Client(guard.url, mode="legacy") as doomed, Client(guard.url, mode="legacy") as bystander:
            waiting = anyio.Event()
            failures: list[str] = []

            async def on_wait(progress: float, total: float | None, message: str | None) -> None:
                waiting.set()

            async def bystander_waits() -> None:
                with pytest.raises(MCPError) as raised:
                    await bystander.call_tool("wait", {}, progress_callback=on_wait)
                failures.append(str(raised.value))

            async with anyio.create_task_group() as tg:
                tg.start_soon(bystander_waits)
                await waiting.wait()
                with pytest.raises(MCPError, match="exited with status 7"):
                    await doomed.call_tool("crash", {})
    # The bystander's call in flight on that upstream gets the same story.
    assert len(failures) == 1 and "exited with status 7" in failures[0]
