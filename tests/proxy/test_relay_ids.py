"""Guard owns the ids it sends upstream: the relay, with the test playing the upstream over memory streams.

Whatever ids the client picks (`guard-1`, `1`, `"1"`), every request upstream, the guard's own calls
included, gets a fresh integer id from one counter (which is also its progress token), and what comes back
is mapped to the client's id and token; an answer to an id guard never sent, or a second answer, goes
nowhere.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

from guard.core import OpenGate, Session
from guard.errors import UpstreamError
from guard.proxy.limits import DEFAULT_LIMITS, Limits
from guard.proxy.relay import ClientPort, Relay
from guard.proxy.upstream import UpstreamLink
from tests.conftest import WAIT_S

pytestmark = pytest.mark.anyio

JSON = dict[str, Any]


@dataclass
class Ends:
    """The test's ends of a relay: it speaks as the client and as the upstream."""

    relay: Relay
    client_send: MemoryObjectSendStream[SessionMessage | Exception]
    client_receive: MemoryObjectReceiveStream[SessionMessage]
    upstream_send: MemoryObjectSendStream[SessionMessage | Exception]
    upstream_receive: MemoryObjectReceiveStream[SessionMessage]

    async def from_client(self, message: types.JSONRPCMessage) -> None:
        await self.client_send.send(SessionMessage(message))

    async def to_client(self) -> types.JSONRPCMessage:
        return (await self.client_receive.receive()).message

    async def from_upstream(self, message: types.JSONRPCMessage) -> None:
        await self.upstream_send.send(SessionMessage(message))

    async def to_upstream(self) -> types.JSONRPCMessage:
        return (await self.upstream_receive.receive()).message


@asynccontextmanager
async def relay(limits: Limits = DEFAULT_LIMITS) -> AsyncIterator[Ends]:
    client_send, client_read = anyio.create_memory_object_stream[SessionMessage | Exception](16)
    client_write, client_receive = anyio.create_memory_object_stream[SessionMessage](16)
    upstream_send, upstream_read = anyio.create_memory_object_stream[SessionMessage | Exception](16)
    upstream_write, upstream_receive = anyio.create_memory_object_stream[SessionMessage](16)

    async def messages() -> AsyncIterator[SessionMessage | Exception]:
        async for item in upstream_read:
            yield item

    link = UpstreamLink("scripted", messages(), upstream_write.send)
    the_relay = Relay(Session("s-1"), OpenGate(), ClientPort.of_streams(client_read, client_write), link, limits)
    streams = (client_send, client_read, client_write, client_receive, upstream_send, upstream_read, upstream_write)
    async with AsyncExitStack() as closing, anyio.create_task_group() as tg:
        for stream in (*streams, upstream_receive):
            await closing.enter_async_context(stream)
        tg.start_soon(the_relay.run)
        yield Ends(the_relay, client_send, client_receive, upstream_send, upstream_receive)
        tg.cancel_scope.cancel()


def request(request_id: types.RequestId, method: str, params: JSON | None = None) -> types.JSONRPCRequest:
    return types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method, params=params)


def response(request_id: types.RequestId, result: JSON) -> types.JSONRPCResponse:
    return types.JSONRPCResponse(jsonrpc="2.0", id=request_id, result=result)


async def test_every_request_upstream_gets_an_id_of_guards_own_and_its_answer_goes_back_to_its_sender() -> None:
    own_result: list[JSON] = []
    with anyio.fail_after(WAIT_S):
        async with relay() as ends, anyio.create_task_group() as tg:
            await ends.from_client(request("guard-1", "tools/call", {"name": "echo", "arguments": {}}))
            await ends.from_client(request(1, "ping"))
            await ends.from_client(request("1", "resources/list", {"_meta": {"progressToken": "p"}}))

            async def own_call() -> None:
                own_result.append(await ends.relay.call("balance", {}))

            tg.start_soon(own_call)
            sent = [await ends.to_upstream() for _ in range(4)]
            assert all(isinstance(m, types.JSONRPCRequest) for m in sent)
            by_method = {(m.method, (m.params or {}).get("name")): m for m in sent}  # type: ignore[union-attr]
            ids = [m.id for m in sent]  # type: ignore[union-attr]
            assert sorted(ids) == [1, 2, 3, 4]  # type: ignore[type-var]
            listed = by_method[("resources/list", None)]
            assert listed.params == {"_meta": {"progressToken": listed.id}}  # type: ignore[union-attr]

            # Answers in reverse order, a progress step, an answer to an id never sent, and a second answer.
            progress = {"progressToken": listed.id, "progress": 1}  # type: ignore[union-attr]
            await ends.from_upstream(
                types.JSONRPCNotification(jsonrpc="2.0", method="notifications/progress", params=progress)
            )
            for message in reversed(sent):
                name = (message.params or {}).get("name")  # type: ignore[union-attr]
                await ends.from_upstream(response(message.id, {"answered": f"{message.method} {name}"}))  # type: ignore[union-attr]
            await ends.from_upstream(response(99, {"answered": "nobody"}))
            await ends.from_upstream(response(sent[0].id, {"answered": "twice"}))  # type: ignore[union-attr]
            await ends.from_upstream(response(2**40, {"answered": "nobody"}))
            await ends.from_upstream(types.JSONRPCRequest(jsonrpc="2.0", id="up-1", method="ping"))

            received = [await ends.to_client() for _ in range(5)]
            with pytest.raises(anyio.WouldBlock):  # the stray and second answers were dropped, not queued
                ends.client_receive.receive_nowait()
    progressed = types.JSONRPCNotification(
        jsonrpc="2.0", method="notifications/progress", params={"progressToken": "p", "progress": 1}
    )
    upstreams_own = types.JSONRPCRequest(jsonrpc="2.0", id="up-1", method="ping")
    assert progressed in received and upstreams_own in received
    answers = {m.id: m.result["answered"] for m in received if isinstance(m, types.JSONRPCResponse)}
    assert answers == {"guard-1": "tools/call echo", 1: "ping None", "1": "resources/list None"}
    assert own_result == [{"answered": "tools/call balance"}]


async def test_a_call_of_guards_own_that_gets_no_answer_times_out_and_is_cancelled_upstream() -> None:
    with anyio.fail_after(WAIT_S):
        async with relay(Limits(request_timeout_s=0.05)) as ends:
            with pytest.raises(UpstreamError) as raised:
                await ends.relay.call("balance", {})
            sent = await ends.to_upstream()
            cancelled = await ends.to_upstream()
    assert raised.value.code == types.REQUEST_TIMEOUT
    assert raised.value.not_run is False  # no answer: whatever it was may have run
    assert isinstance(sent, types.JSONRPCRequest) and isinstance(cancelled, types.JSONRPCNotification)
    assert cancelled.method == "notifications/cancelled"
    assert cancelled.params == {"requestId": sent.id, "reason": "no answer within 0.05 s"}
