"""Transparency against a real third-party server: `@modelcontextprotocol/server-everything`.

Every scenario runs twice, once with the client talking straight to server-everything over stdio
(DIRECT) and once THROUGH the guard (a real `guard run` subprocess, its stdio front or its HTTP
front), and the two outcomes must be equal: an open guard is invisible.

server-everything speaks only the handshake era, so every client here uses `mode="legacy"`
(the `initialize` handshake). The 2026-07-28 era is covered by another test file
(tests/proxy/test_eras.py), against a Python upstream.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol, TypeVar, get_args

import anyio
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.session import ClientRequestContext
from pydantic import FileUrl

from tests.conftest import WAIT_S, Spawned

pytestmark = [pytest.mark.anyio, pytest.mark.peer]

T = TypeVar("T")
Front = Literal["stdio", "http"]
Progress = list[tuple[float, float | None]]
# A long-running operation that only cancellation can end within WAIT_S (first progress after 0.5 s).
LONG_S = 4 * int(WAIT_S)


class Connect(Protocol):
    """Build an (unentered) legacy-mode `Client` for one side, with the given callbacks."""

    def __call__(self, **callbacks: Any) -> Client: ...


Scenario = Callable[[Connect], Awaitable[T]]


@pytest.fixture
def direct(everything: list[str]) -> Connect:
    server = StdioServerParameters(command=everything[0], args=everything[1:])

    def connect(**callbacks: Any) -> Client:
        return Client(server, mode="legacy", **callbacks)

    return connect


@pytest.fixture(params=["stdio", "http"])
def guarded(request: pytest.FixtureRequest, everything: list[str], http_guard: Callable[..., Spawned]) -> Connect:
    front: Front = request.param
    server: StdioServerParameters | str
    if front == "stdio":
        server = StdioServerParameters(
            command=sys.executable, args=["-m", "guard", "run", "--", *everything], env=dict(os.environ)
        )
    else:
        server = http_guard(["--", *everything]).url

    def connect(**callbacks: Any) -> Client:
        return Client(server, mode="legacy", **callbacks)

    return connect


class Both(Protocol):
    """Run one scenario DIRECT and THROUGH GUARD side by side; return (direct, through guard)."""

    async def __call__(self, scenario: Scenario[T]) -> tuple[T, T]: ...


@pytest.fixture
def both(direct: Connect, guarded: Connect) -> Both:
    async def run(scenario: Scenario[T]) -> tuple[T, T]:
        outcomes: dict[str, T] = {}

        async def one(side: str, connect: Connect) -> None:
            outcomes[side] = await scenario(connect)

        # Every wait of a scenario (sessions, calls, events) falls under this one bound.
        with anyio.fail_after(WAIT_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(one, "direct", direct)
                tg.start_soon(one, "guard", guarded)
        return outcomes["direct"], outcomes["guard"]

    return run


def dump(result: types.Result) -> dict[str, Any]:
    # Whole results are compared, with no field excluded: probing showed none that differs between
    # the two sides (no timestamps, session ids or per-connection values in server-everything's answers).
    return result.model_dump(mode="json")


async def test_the_handshake_through_the_guard_reports_the_servers_own_identity_and_capabilities(
    both: Both,
) -> None:
    async def handshake(connect: Connect) -> dict[str, Any]:
        async with connect() as client:
            result = client.session.initialize_result
            assert result is not None
            return dump(result)

    direct, guarded = await both(handshake)
    assert guarded == direct


async def test_listings_through_the_guard_equal_the_servers_own(both: Both) -> None:
    async def listings(connect: Connect) -> dict[str, Any]:
        async with connect() as client:
            return {
                "tools": dump(await client.list_tools()),
                "resources": dump(await client.list_resources()),
                "resource_templates": dump(await client.list_resource_templates()),
                "prompts": dump(await client.list_prompts()),
            }

    direct, guarded = await both(listings)
    assert direct["tools"]["tools"], "server-everything listed no tools"
    assert guarded == direct


async def test_a_tool_call_through_the_guard_returns_the_servers_own_result(both: Both) -> None:
    async def echo(connect: Connect) -> dict[str, Any]:
        async with connect() as client:
            return dump(await client.call_tool("echo", {"message": "through the guard"}))

    direct, guarded = await both(echo)
    assert direct["content"] == [{"type": "text", "text": "Echo: through the guard", "annotations": None, "meta": None}]
    assert guarded == direct


async def test_a_resource_read_through_the_guard_returns_the_servers_own_contents(both: Both) -> None:
    async def read_first_static(connect: Connect) -> tuple[str, dict[str, Any]]:
        async with connect() as client:
            listing = await client.list_resources()
            uri = next(r.uri for r in listing.resources if r.uri.startswith("demo://resource/static/"))
            return uri, dump(await client.read_resource(uri))

    (uri, direct), (guarded_uri, guarded) = await both(read_first_static)
    assert guarded_uri == uri
    assert direct["contents"] and direct["contents"][0]["uri"] == uri
    assert guarded == direct


async def test_prompts_through_the_guard_render_as_the_servers_own(both: Both) -> None:
    async def prompts(connect: Connect) -> dict[str, Any]:
        async with connect() as client:
            return {
                "simple": dump(await client.get_prompt("simple-prompt")),
                "args": dump(await client.get_prompt("args-prompt", {"city": "Lisbon", "state": "Lisboa"})),
            }

    direct, guarded = await both(prompts)
    assert "Lisbon" in str(direct["args"]["messages"])
    assert guarded == direct


async def test_argument_completion_through_the_guard_offers_the_servers_own_values(both: Both) -> None:
    prompt = types.PromptReference(type="ref/prompt", name="completable-prompt")

    async def complete(connect: Connect) -> dict[str, Any]:
        async with connect() as client:
            return {
                "department": dump(await client.complete(prompt, {"name": "department", "value": "S"})),
                "name": dump(
                    await client.complete(
                        prompt, {"name": "name", "value": ""}, context_arguments={"department": "Engineering"}
                    )
                ),
            }

    direct, guarded = await both(complete)
    assert direct["department"]["completion"]["values"] == ["Sales", "Support"]
    assert direct["name"]["completion"]["values"] == ["Alice", "Bob", "Charlie"]
    assert guarded == direct


async def test_progress_notifications_reach_the_caller_through_the_guard_in_the_servers_order(
    both: Both,
) -> None:
    async def long_operation(connect: Connect) -> tuple[Progress, dict[str, Any]]:
        seen: Progress = []

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            seen.append((progress, total))

        async with connect() as client:
            result = await client.call_tool(
                "trigger-long-running-operation", {"duration": 1, "steps": 3}, progress_callback=on_progress
            )
        return seen, dump(result)

    direct, guarded = await both(long_operation)
    assert direct[0] == [(1.0, 3.0), (2.0, 3.0), (3.0, 3.0)]
    assert guarded == direct


async def test_cancelling_a_call_through_the_guard_ends_it_early_and_the_session_keeps_working(
    both: Both,
) -> None:
    async def cancel_then_echo(connect: Connect) -> tuple[bool, dict[str, Any]]:
        started = anyio.Event()
        call = anyio.CancelScope()
        answered: types.CallToolResult | None = None

        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            started.set()

        async def long_call(client: Client) -> None:
            nonlocal answered
            with call:
                answered = await client.call_tool(
                    "trigger-long-running-operation",
                    {"duration": LONG_S, "steps": LONG_S * 2},
                    progress_callback=on_progress,
                )

        async with connect() as client:
            async with anyio.create_task_group() as tg:
                tg.start_soon(long_call, client)
                await started.wait()
                # The SDK client answers the abandoned request with notifications/cancelled.
                call.cancel()
            assert answered is None
            after = await client.call_tool("echo", {"message": "still here"})
        return call.cancelled_caught, dump(after)

    # `both` bounds the whole exchange by WAIT_S, well under the LONG_S the operation would take.
    direct, guarded = await both(cancel_then_echo)
    assert direct[0] is True
    assert direct[1]["content"][0]["text"] == "Echo: still here"
    assert guarded == direct


async def test_a_sampling_request_crosses_the_guard_to_the_client_and_its_answer_flows_back(
    both: Both,
) -> None:
    async def sample(connect: Connect) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
        requests: list[dict[str, Any]] = []

        async def on_sampling(
            context: ClientRequestContext, params: types.CreateMessageRequestParams
        ) -> types.CreateMessageResult:
            requests.append(params.model_dump(mode="json"))
            return types.CreateMessageResult(
                role="assistant",
                content=types.TextContent(type="text", text="a sampled answer"),
                model="test-model",
                stop_reason="endTurn",
            )

        async with connect(sampling_callback=on_sampling) as client:
            # Declaring sampling makes server-everything register its sampling tool at `initialized`.
            names = [tool.name for tool in (await client.list_tools()).tools]
            result = await client.call_tool("trigger-sampling-request", {"prompt": "hello", "maxTokens": 5})
        return names, requests, dump(result)

    direct, guarded = await both(sample)
    names, requests, result = direct
    assert "trigger-sampling-request" in names
    assert len(requests) == 1 and requests[0]["max_tokens"] == 5
    assert "a sampled answer" in result["content"][0]["text"]
    assert guarded == direct


async def test_an_elicitation_request_crosses_the_guard_to_the_client_and_its_answer_flows_back(
    both: Both,
) -> None:
    async def elicit(connect: Connect) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
        requests: list[dict[str, Any]] = []

        async def on_elicitation(
            context: ClientRequestContext, params: types.ElicitRequestParams
        ) -> types.ElicitResult:
            requests.append(params.model_dump(mode="json"))
            return types.ElicitResult(action="accept", content={"name": "Ada Lovelace", "check": True})

        async with connect(elicitation_callback=on_elicitation) as client:
            names = [tool.name for tool in (await client.list_tools()).tools]
            result = await client.call_tool("trigger-elicitation-request", {})
        return names, requests, dump(result)

    direct, guarded = await both(elicit)
    names, requests, result = direct
    assert "trigger-elicitation-request" in names
    assert len(requests) == 1
    assert "- Name: Ada Lovelace" in str(result["content"])
    assert guarded == direct


async def test_a_roots_request_and_the_log_message_it_triggers_cross_the_guard_unchanged(both: Both) -> None:
    async def roots(connect: Connect) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        logged: list[dict[str, Any]] = []
        roots_logged = anyio.Event()

        async def on_list_roots(context: ClientRequestContext) -> types.ListRootsResult:
            return types.ListRootsResult(roots=[types.Root(uri=FileUrl("file:///tmp/guard-test"), name="guard test")])

        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            logged.append(params.model_dump(mode="json"))
            if params.logger == "everything-server":
                roots_logged.set()

        async with connect(list_roots_callback=on_list_roots, logging_callback=on_log) as client:
            # 350 ms after `initialized`, server-everything asks the client for its roots (a request
            # of its own, tied to no client request: over HTTP it rides the GET stream, which the SDK
            # client opens as it sends `initialized`) and then logs how many roots it received.
            await roots_logged.wait()
            result = await client.call_tool("get-roots-list", {})
        return logged, dump(result)

    direct, guarded = await both(roots)
    logged, result = direct
    assert logged == [
        {
            "meta": None,
            "level": "info",
            "logger": "everything-server",
            "data": "Roots updated: 1 root(s) received from client",
        }
    ]
    assert "file:///tmp/guard-test" in str(result["content"])
    assert guarded == direct


async def test_simulated_log_messages_reach_the_client_through_the_guard(both: Both) -> None:
    async def first_log(connect: Connect) -> dict[str, Any]:
        logged: list[types.LoggingMessageNotificationParams] = []
        arrived = anyio.Event()

        async def on_log(params: types.LoggingMessageNotificationParams) -> None:
            logged.append(params)
            arrived.set()

        async with connect(logging_callback=on_log) as client:
            # Logging starts with one message at once, then one every 5 s (over HTTP these ride the
            # GET stream; should the first beat it, the next one still arrives within WAIT_S).
            await client.call_tool("toggle-simulated-logging", {})
            await arrived.wait()
            await client.call_tool("toggle-simulated-logging", {})
        # The level is chosen at random per message, so only the shape can be compared.
        message = logged[0]
        return {
            "level_is_known": message.level in get_args(types.LoggingLevel),
            "logger": message.logger,
            "data_is_text": isinstance(message.data, str),
        }

    direct, guarded = await both(first_log)
    assert direct == {"level_is_known": True, "logger": None, "data_is_text": True}
    assert guarded == direct
