"""The relay carries both protocol eras, over both fronts, to both kinds of upstream.

The upstream is `tests/upstreams/dual_era.py` (mcp 2.3 low-level server), which speaks the
handshake era and 2026-07-28; server-everything (the third-party peer) speaks only the former.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import DUAL_ERA, WAIT_S, Spawned, stop

pytestmark = pytest.mark.anyio

ERAS = ["legacy", "2026-07-28"]


def guard_stdio(*upstream_args: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "guard", "run", *upstream_args], env=dict(os.environ)
    )


def through_guard(
    front: str,
    upstream: str,
    dual_era_http: Spawned,
    http_guard: Callable[..., Spawned],
    sharing: tuple[str, ...] = (),
) -> StdioServerParameters | str:
    upstream_args = ["--upstream", dual_era_http.url] if upstream == "http" else ["--", *DUAL_ERA]
    if front == "stdio":
        return guard_stdio(*upstream_args)
    return http_guard([*sharing, *upstream_args]).url


@pytest.fixture(params=["stdio", "http"])
def front(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["stdio", "http"])
def upstream(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=ERAS)
def era(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _session_facts(client: Client) -> dict[str, Any]:
    steps: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append((progress, total))

    tools = await client.list_tools()
    echo = await client.call_tool("echo", {"text": "über ✓"})
    counted = await client.call_tool("count", {"n": 3}, progress_callback=on_progress)
    return {
        "tools": tools.model_dump(exclude={"meta"}),
        "echo": echo.model_dump(exclude={"meta"}),
        "count": counted.model_dump(exclude={"meta"}),
        "progress": steps,
    }


async def test_a_session_through_the_guard_matches_a_direct_one(
    front: str, upstream: str, era: str, dual_era_http: Spawned, http_guard: Callable[..., Spawned]
) -> None:
    direct_target = (
        dual_era_http.url if upstream == "http" else StdioServerParameters(command=DUAL_ERA[0], args=DUAL_ERA[1:])
    )
    with anyio.fail_after(WAIT_S):
        async with Client(direct_target, mode=era) as client:  # type: ignore[arg-type]
            direct = await _session_facts(client)
        async with Client(through_guard(front, upstream, dual_era_http, http_guard), mode=era) as client:  # type: ignore[arg-type]
            guarded = await _session_facts(client)
    assert guarded == direct
    assert guarded["progress"] == [(1, 3), (2, 3), (3, 3)]
    assert guarded["echo"]["content"][0]["text"] == "über ✓"


async def test_a_cancelled_call_is_cancelled_upstream_and_the_session_goes_on(
    front: str, era: str, dual_era_http: Spawned, http_guard: Callable[..., Spawned]
) -> None:
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    with anyio.fail_after(WAIT_S):
        async with Client(through_guard(front, "stdio", dual_era_http, http_guard), mode=era) as client:  # type: ignore[arg-type]
            async with anyio.create_task_group() as tg:
                cancel_scope = anyio.CancelScope()

                async def waiter() -> None:
                    with cancel_scope:
                        await client.call_tool("wait", {}, progress_callback=on_progress)
                        pytest.fail("the wait tool answered although it should have been cancelled")

                tg.start_soon(waiter)
                await started.wait()
                cancel_scope.cancel()
            # The upstream is still there and answers after the cancellation.
            after = await client.call_tool("echo", {"text": "still here"})
    assert after.content[0].text == "still here"  # type: ignore[union-attr]


async def test_server_to_client_requests_and_notifications_reach_the_right_client(
    front: str, dual_era_http: Spawned, http_guard: Callable[..., Spawned]
) -> None:
    """Elicitation, roots, list_changed and logging cross the guard (handshake era: the 2026 era has no
    server-to-client requests). Over HTTP a second client session on an upstream of its own
    (`--upstream-sessions per-session`) must not see the first one's traffic; on a shared upstream the
    list_changed and log notifications go to every client (tests/proxy/test_sharing_everything.py)."""
    target = through_guard(front, "stdio", dual_era_http, http_guard, ("--upstream-sessions", "per-session"))
    tools_changed = anyio.Event()
    logged: list[str] = []
    bystander_saw: list[object] = []

    async def on_elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        assert params.message == "Pay 10 sat?"
        return types.ElicitResult(action="accept", content={"ok": True})

    async def on_roots(context: Any) -> types.ListRootsResult:
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/agent")])  # type: ignore[arg-type]

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            tools_changed.set()

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logged.append(str(params.data))

    async def bystander_message(message: object) -> None:
        bystander_saw.append(message)

    with anyio.fail_after(WAIT_S):
        async with Client(
            target,  # type: ignore[arg-type]
            mode="legacy",
            elicitation_callback=on_elicit,
            list_roots_callback=on_roots,
            message_handler=on_message,
            logging_callback=on_log,
        ) as client:
            other = Client(target, mode="legacy", message_handler=bystander_message)  # type: ignore[arg-type]
            async with other if front == "http" else _nothing():
                asked = await client.call_tool("ask", {})
                roots = await client.call_tool("roots", {})
                sent = await client.call_tool("changed", {})
                await tools_changed.wait()
                if front == "http":
                    await other.call_tool("echo", {"text": "x"})
    assert asked.content[0].text == "accept {'ok': True}"  # type: ignore[union-attr]
    assert roots.content[0].text == "file:///work/agent"  # type: ignore[union-attr]
    assert sent.content[0].text == "sent"  # type: ignore[union-attr]
    assert logged == ["tools changed"]
    assert bystander_saw == []


@asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield


async def test_every_http_client_session_gets_its_own_upstream_session(
    http_guard: Callable[..., Spawned],
) -> None:
    """`calls` counts the calls its upstream process answered: a second session starts from zero
    (`--upstream-sessions per-session`; on a shared upstream both count on one: test_sharing_everything)."""
    guard = http_guard(["--upstream-sessions", "per-session", "--", *DUAL_ERA])
    with anyio.fail_after(WAIT_S):
        async with Client(guard.url, mode="legacy") as first, Client(guard.url, mode="legacy") as second:
            await first.call_tool("echo", {"text": "one"})
            await first.call_tool("echo", {"text": "two"})
            first_count = await first.call_tool("calls", {})
            second_count = await second.call_tool("calls", {})
    assert first_count.content[0].text == "2"  # type: ignore[union-attr]
    assert second_count.content[0].text == "0"  # type: ignore[union-attr]
    sessions = [line for line in guard.stderr_lines if "relaying to" in line]
    assert len(sessions) == 2 and len({line.split()[4] for line in sessions}) == 2


async def test_a_stopped_guard_leaves_no_upstream_process_behind(http_guard: Callable[..., Spawned]) -> None:
    guard = http_guard(["--", *DUAL_ERA])
    with anyio.fail_after(WAIT_S):
        async with Client(guard_stdio("--", *DUAL_ERA), mode="legacy") as client:
            stdio_pid = int((await client.call_tool("pid", {})).content[0].text)  # type: ignore[union-attr]
        async with Client(guard.url, mode="legacy") as client:
            http_pid = int((await client.call_tool("pid", {})).content[0].text)  # type: ignore[union-attr]
            # The guard stops while the session is still open.
            await anyio.to_thread.run_sync(stop, guard)
    for pid in (stdio_pid, http_pid):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
