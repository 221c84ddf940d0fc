"""Two clients on one shared upstream, through a real `guard run --listen --upstream-sessions shared`.

Handshake era: `@modelcontextprotocol/server-everything` (the third-party peer; it speaks only that era).
2026-07-28 era: `tests/upstreams/dual_era.py` (mcp 2.3), two identities (bearer tokens), since a 2026 era
identity is one session. In both, the clients number their requests alike (both send id 1, 2, ...), so every
answer reaching the right client also shows ids reused by both are answered correctly.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import DUAL_ERA, WAIT_S, Spawned
from tests.proxy.processes import children

pytestmark = [pytest.mark.anyio, pytest.mark.peer]

ALICE = "alice-token-for-sharing-tests-0123"
BOB = "bob-token-for-sharing-tests-456789"
Progress = list[tuple[float, float | None]]


def recorder(into: Progress) -> Callable[[float, float | None, str | None], Any]:
    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        into.append((progress, total))

    return on_progress


@pytest.fixture
def shared_everything(everything: list[str], http_guard: Callable[..., Spawned]) -> Spawned:
    return http_guard(["--upstream-sessions", "shared", "--", *everything])


class Asked:
    """What server→client requests reached one client."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sampling: list[str] = []
        self.elicitation: list[str] = []

    async def sample(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.sampling.append(str(params.messages[0].content.text))  # type: ignore[union-attr]
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=f"{self.name} sampled"), model="test"
        )

    async def elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.elicitation.append(params.message)
        return types.ElicitResult(action="decline")

    def client(self, url: str) -> Client:
        return Client(url, mode="legacy", sampling_callback=self.sample, elicitation_callback=self.elicit)


async def test_two_clients_on_one_everything_each_get_only_their_own_progress(shared_everything: Spawned) -> None:
    a, b = Asked("a"), Asked("b")
    progress_a: Progress = []
    progress_b: Progress = []
    with anyio.fail_after(WAIT_S):
        async with a.client(shared_everything.url) as client_a, b.client(shared_everything.url) as client_b:
            assert len(children(shared_everything.process.pid)) == 1  # one upstream for both sessions
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: client_a.call_tool(
                        "trigger-long-running-operation",
                        {"duration": 1, "steps": 3},
                        progress_callback=recorder(progress_a),
                    )
                )
                tg.start_soon(
                    lambda: client_b.call_tool(
                        "trigger-long-running-operation",
                        {"duration": 1, "steps": 4},
                        progress_callback=recorder(progress_b),
                    )
                )
    assert progress_a == [(1, 3), (2, 3), (3, 3)]
    assert progress_b == [(1, 4), (2, 4), (3, 4), (4, 4)]


async def test_sampling_and_elicitation_reach_only_the_client_whose_call_asked(shared_everything: Spawned) -> None:
    a, b = Asked("a"), Asked("b")
    with anyio.fail_after(WAIT_S):
        async with a.client(shared_everything.url) as client_a, b.client(shared_everything.url) as client_b:
            sampled = await client_a.call_tool("trigger-sampling-request", {"prompt": "from a"})
            elicited = await client_b.call_tool("trigger-elicitation-request", {})
    assert a.sampling == ["Resource trigger-sampling-request context: from a"]
    assert b.sampling == []
    assert "a sampled" in sampled.content[0].text  # type: ignore[union-attr]
    assert len(b.elicitation) == 1 and a.elicitation == []
    assert not elicited.is_error


async def test_a_request_of_the_upstreams_is_refused_when_two_clients_have_calls_in_flight(
    shared_everything: Spawned,
) -> None:
    """server-everything sends its sampling request over stdio with nothing naming the call it belongs to (its
    SDK's `relatedRequestId` is used by the HTTP transport only): while another client's call is in flight,
    guard cannot tell whose it is, refuses it to the upstream, and the asking call fails, said so."""
    a, b = Asked("a"), Asked("b")
    with anyio.fail_after(WAIT_S):
        async with a.client(shared_everything.url) as client_a, b.client(shared_everything.url) as client_b:
            b_running = anyio.Event()

            async def b_progress(progress: float, total: float | None, message: str | None) -> None:
                b_running.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: client_b.call_tool(
                        "trigger-long-running-operation", {"duration": 4, "steps": 4}, progress_callback=b_progress
                    )
                )
                await b_running.wait()
                sampled = await client_a.call_tool("trigger-sampling-request", {"prompt": "ambiguous"})
    assert a.sampling == [] and b.sampling == []
    assert sampled.is_error
    assert "cannot tell which one" in sampled.content[0].text  # type: ignore[union-attr]


async def test_cancelling_one_clients_call_does_not_cancel_the_others(shared_everything: Spawned) -> None:
    progress_a: Progress = []
    progress_b: Progress = []
    first_step = anyio.Event()

    async def on_progress_a(progress: float, total: float | None, message: str | None) -> None:
        progress_a.append((progress, total))
        first_step.set()

    with anyio.fail_after(WAIT_S):
        async with (
            Client(shared_everything.url, mode="legacy") as client_a,
            Client(shared_everything.url, mode="legacy") as client_b,
        ):
            async with anyio.create_task_group() as tg:
                finished: list[types.CallToolResult] = []

                async def b_runs() -> None:
                    finished.append(
                        await client_b.call_tool(
                            "trigger-long-running-operation",
                            {"duration": 2, "steps": 4},
                            progress_callback=recorder(progress_b),
                        )
                    )

                tg.start_soon(b_runs)
                a_call = anyio.CancelScope()

                async def a_runs() -> None:
                    with a_call:
                        await client_a.call_tool(
                            "trigger-long-running-operation",
                            {"duration": 20, "steps": 20},
                            progress_callback=on_progress_a,
                        )

                tg.start_soon(a_runs)
                await first_step.wait()
                a_call.cancel()
            after = await client_a.call_tool("echo", {"message": "a still here"})
    assert len(finished) == 1 and not finished[0].is_error
    assert progress_b == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert len(progress_a) < 20
    assert "a still here" in after.content[0].text  # type: ignore[union-attr]


@asynccontextmanager
async def as_identity(url: str, token: str) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
    async with http, Client(streamable_http_client(url, http_client=http), mode="2026-07-28") as client:  # type: ignore[arg-type]
        yield client


@pytest.fixture
def shared_dual_era(http_guard: Callable[..., Spawned], tmp_path: Path) -> Spawned:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"alice": ALICE, "bob": BOB}))
    return http_guard(["--upstream-sessions", "shared", "--tokens", str(tokens), "--", *DUAL_ERA])


async def test_two_2026_identities_share_one_upstream_and_each_get_only_their_own_progress(
    shared_dual_era: Spawned,
) -> None:
    progress_a: Progress = []
    progress_b: Progress = []
    with anyio.fail_after(WAIT_S):
        async with as_identity(shared_dual_era.url, ALICE) as alice, as_identity(shared_dual_era.url, BOB) as bob:
            pid_a = await alice.call_tool("pid", {})
            pid_b = await bob.call_tool("pid", {})
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: alice.call_tool("count", {"n": 3}, progress_callback=recorder(progress_a)))
                tg.start_soon(lambda: bob.call_tool("count", {"n": 5}, progress_callback=recorder(progress_b)))
    assert pid_a.content[0].text == pid_b.content[0].text  # type: ignore[union-attr]
    assert progress_a == [(1, 3), (2, 3), (3, 3)]
    assert progress_b == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


async def test_cancelling_one_2026_identitys_call_leaves_the_others_running(shared_dual_era: Spawned) -> None:
    waiting = anyio.Event()

    async def on_wait(progress: float, total: float | None, message: str | None) -> None:
        waiting.set()

    with anyio.fail_after(WAIT_S):
        async with as_identity(shared_dual_era.url, ALICE) as alice, as_identity(shared_dual_era.url, BOB) as bob:
            async with anyio.create_task_group() as tg:
                alice_call = anyio.CancelScope()

                async def alice_waits() -> None:
                    with alice_call:
                        await alice.call_tool("wait", {}, progress_callback=on_wait)

                tg.start_soon(alice_waits)
                await waiting.wait()
                before = await bob.call_tool("calls", {})
                alice_call.cancel()
            echoed = await bob.call_tool("echo", {"text": "bob still here"})
            after = await bob.call_tool("calls", {})
            alice_after = await alice.call_tool("echo", {"text": "alice again"})
    assert echoed.content[0].text == "bob still here"  # type: ignore[union-attr]
    assert int(after.content[0].text) == int(before.content[0].text) + 1  # type: ignore[union-attr]
    assert alice_after.content[0].text == "alice again"  # type: ignore[union-attr]
