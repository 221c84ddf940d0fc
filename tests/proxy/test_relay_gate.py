"""The relay hands the gate every tools/call and tools/list, and nothing else: the Gate is its one interception
point (a recording gate here; the policy gate itself is tests/gate/)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp.shared.message import SessionMessage

from guard.core import Forward, Session, ToolCall
from guard.proxy.relay import ClientPort, Relay
from guard.proxy.upstream import StdioUpstream, connect
from tests.conftest import DUAL_ERA, WAIT_S

pytestmark = pytest.mark.anyio

JSON = dict[str, Any]


class RecordingGate:
    """Denies `crash`, hides it from tools/list, and records what it saw."""

    def __init__(self) -> None:
        self.calls: list[ToolCall] = []
        self.upstream_results: list[JSON] = []
        self.listed = 0
        self.refused: list[tuple[str, str]] = []

    async def call_tool(self, call: ToolCall, forward: Forward) -> JSON:
        self.calls.append(call)
        if call.name == "crash":
            return {"content": [{"type": "text", "text": "Denied by test gate"}], "isError": True}
        if call.name == "explode":
            raise RuntimeError("the gate cannot evaluate this")
        result = await forward()
        self.upstream_results.append(result)
        return result

    async def list_tools(self, session: Session, result: JSON) -> JSON:
        self.listed += 1
        return {**result, "tools": [t for t in result["tools"] if t["name"] != "crash"]}

    def subscribe(self, session: Session, link: Any) -> Any:
        return lambda: None

    def call_refused(self, session: Session, tool: str, reason: str) -> None:
        self.refused.append((tool, reason))


class RawClient:
    """Speaks JSON-RPC to a relay over in-memory streams, one request at a time."""

    def __init__(self, send: Any, receive: Any) -> None:
        self._send, self._receive = send, receive
        self._ids = iter(range(1, 1_000_000))

    async def request(self, method: str, params: JSON | None = None) -> types.JSONRPCResponse | types.JSONRPCError:
        request_id = next(self._ids)
        await self._send.send(
            SessionMessage(types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method, params=params))
        )
        while True:
            message = (await self._receive.receive()).message
            if isinstance(message, types.JSONRPCResponse | types.JSONRPCError) and message.id == request_id:
                return message


@asynccontextmanager
async def relay_with(gate: RecordingGate) -> AsyncIterator[RawClient]:
    async with connect(StdioUpstream(tuple(DUAL_ERA))) as link, anyio.create_task_group() as tg:
        to_relay, client_read = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        client_write, from_relay = anyio.create_memory_object_stream[SessionMessage](0)
        port = ClientPort.of_streams(client_read, client_write)
        tg.start_soon(Relay(Session("s-1", identity="alice"), gate, port, link).run)
        client = RawClient(to_relay, from_relay)
        await client.request(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        )
        async with to_relay, client_read, from_relay:
            yield client


async def test_the_gate_sees_the_call_and_gets_the_upstream_result_back() -> None:
    gate = RecordingGate()
    with anyio.fail_after(WAIT_S):
        async with relay_with(gate) as client:
            answer = await client.request(
                "tools/call", {"name": "echo", "arguments": {"text": "hi"}, "_meta": {"trace": "t-1"}}
            )
    assert isinstance(answer, types.JSONRPCResponse)
    assert answer.result["content"][0]["text"] == "hi"
    [call] = gate.calls
    assert (call.session.id, call.session.identity, call.name) == ("s-1", "alice", "echo")
    assert call.arguments == {"text": "hi"} and call.meta == {"trace": "t-1"}
    assert gate.upstream_results == [answer.result]


async def test_a_denial_is_answered_by_the_gate_and_never_reaches_the_upstream() -> None:
    gate = RecordingGate()
    with anyio.fail_after(WAIT_S):
        async with relay_with(gate) as client:
            denied = await client.request("tools/call", {"name": "crash", "arguments": {}})
            # Had `crash` been forwarded the upstream would have died; it still answers.
            alive = await client.request("tools/call", {"name": "echo", "arguments": {"text": "alive"}})
    assert isinstance(denied, types.JSONRPCResponse) and denied.result["isError"] is True
    assert isinstance(alive, types.JSONRPCResponse) and alive.result["content"][0]["text"] == "alive"


async def test_tools_list_passes_through_the_gate() -> None:
    gate = RecordingGate()
    with anyio.fail_after(WAIT_S):
        async with relay_with(gate) as client:
            listing = await client.request("tools/list")
    assert isinstance(listing, types.JSONRPCResponse)
    names = [t["name"] for t in listing.result["tools"]]
    assert "crash" not in names and names[:4] == ["echo", "count", "wait", "calls"]
    assert gate.listed == 1


@pytest.mark.parametrize(
    "params",
    [
        {"name": 42, "arguments": {}},
        {"name": "echo", "arguments": ["not", "an", "object"]},
        {"name": "echo", "arguments": {}, "_meta": "nope"},
        {"arguments": {}},
    ],
)
async def test_an_unparseable_call_is_a_json_rpc_error_and_is_not_forwarded(params: JSON) -> None:
    gate = RecordingGate()
    with anyio.fail_after(WAIT_S):
        async with relay_with(gate) as client:
            answer = await client.request("tools/call", params)
            served = await client.request("tools/call", {"name": "calls", "arguments": {}})
    assert isinstance(answer, types.JSONRPCError)
    assert answer.error.code == types.INVALID_PARAMS
    assert "'name' must be a string and 'arguments' an object" in answer.error.message
    assert [c.name for c in gate.calls] == ["calls"]
    assert isinstance(served, types.JSONRPCResponse) and served.result["content"][0]["text"] == "0"
    # It never reached `call_tool`, but the gate recorded it (the audit trail).
    [(tool, reason)] = gate.refused
    assert tool == (params["name"] if isinstance(params.get("name"), str) else "(no name)")
    assert reason == answer.error.message


async def test_a_gate_that_fails_closes_the_call_with_an_error_and_forwards_nothing() -> None:
    gate = RecordingGate()
    with anyio.fail_after(WAIT_S):
        async with relay_with(gate) as client:
            answer = await client.request("tools/call", {"name": "explode", "arguments": {}})
    assert isinstance(answer, types.JSONRPCError)
    assert answer.error.code == types.INTERNAL_ERROR
    assert answer.error.message == "guard could not evaluate the call to explode"
    assert gate.upstream_results == []
