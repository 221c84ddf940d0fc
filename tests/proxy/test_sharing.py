"""One upstream, many relays: `SharedUpstream` in process, the test playing a scripted (and hostile) upstream
over memory streams and speaking as two relays through their virtual links.

"Nothing else arrived" is shown without waiting: after the message under test, the upstream sends a
notification every client gets (a log message); a client's next message being that marker proves the one
before it did not reach that client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

from guard.core import OpenGate, Session
from guard.errors import ConfigError
from guard.proxy.relay import ClientPort, Relay
from guard.proxy.sharing import AMBIGUOUS, CLIENT_BUFFER, DEFAULT_MODE, SHARED, SharedUpstream, Sharing, _Client
from guard.proxy.upstream import StdioUpstream, UpstreamLink
from guard.proxy.warm import WarmPool, handshake
from tests.conftest import WAIT_S

pytestmark = pytest.mark.anyio

JSON = dict[str, Any]
MARKER = types.JSONRPCNotification(
    jsonrpc="2.0", method="notifications/message", params={"level": "info", "data": "marker"}
)
INIT_RESULT: JSON = {
    "protocolVersion": "2025-11-25",
    "capabilities": {"tools": {}},
    "serverInfo": {"name": "scripted", "version": "1"},
}


def request(
    request_id: types.RequestId, method: str = "tools/call", token: Any = None, **params: Any
) -> types.JSONRPCRequest:
    if token is not None:
        params["_meta"] = {"progressToken": token}
    return types.JSONRPCRequest(jsonrpc="2.0", id=request_id, method=method, params=params or None)


def answer(request_id: types.RequestId, **result: Any) -> types.JSONRPCResponse:
    return types.JSONRPCResponse(jsonrpc="2.0", id=request_id, result=result)


@dataclass
class Scripted:
    """The test's end of the upstream, and the shared upstream over it."""

    shared: SharedUpstream
    to_guard: MemoryObjectSendStream[SessionMessage | Exception]
    from_guard: MemoryObjectReceiveStream[SessionMessage]

    async def says(self, message: types.JSONRPCMessage) -> None:
        await self.to_guard.send(SessionMessage(message))

    async def hears(self) -> types.JSONRPCMessage:
        return (await self.from_guard.receive()).message


class Relayed:
    """One relay's side of a virtual link."""

    def __init__(self, client: _Client) -> None:
        self.client = client
        self._messages = aiter(client.link.messages)

    async def sends(self, message: types.JSONRPCMessage) -> None:
        await self.client.link.send(SessionMessage(message))

    async def gets(self) -> types.JSONRPCMessage:
        item = await anext(self._messages)
        assert isinstance(item, SessionMessage)
        return item.message

    async def gets_marker_next(self) -> None:
        assert await self.gets() == MARKER


@asynccontextmanager
async def scripted(linger_s: float = 60.0) -> AsyncIterator[Scripted]:
    to_guard, upstream_read = anyio.create_memory_object_stream[SessionMessage | Exception](64)
    upstream_write, from_guard = anyio.create_memory_object_stream[SessionMessage](64)

    @asynccontextmanager
    async def connect() -> AsyncIterator[UpstreamLink]:
        async def messages() -> AsyncIterator[SessionMessage | Exception]:
            async for item in upstream_read:
                yield item

        link = UpstreamLink("scripted", messages(), upstream_write.send)
        link._failure = "the scripted upstream exited with status 3"
        yield link

    shared = SharedUpstream("scripted", linger_s)
    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg, to_guard, upstream_read, upstream_write, from_guard:
            await tg.start(shared.serve, connect)
            yield Scripted(shared, to_guard, from_guard)
            for client in list(shared.clients):
                await shared.detach(client)
            tg.cancel_scope.cancel()


def two_clients(up: Scripted) -> tuple[Relayed, Relayed]:
    return Relayed(up.shared.attach()), Relayed(up.shared.attach())


async def test_two_clients_using_the_same_id_each_get_their_own_answer() -> None:
    async with scripted() as up:
        a, b = two_clients(up)
        await a.sends(request(1, name="echo"))
        await b.sends(request(1, name="echo"))
        first, second = await up.hears(), await up.hears()
        assert isinstance(first, types.JSONRPCRequest) and isinstance(second, types.JSONRPCRequest)
        assert first.id != second.id
        await up.says(answer(second.id, who="b"))
        await up.says(answer(first.id, who="a"))
        assert await b.gets() == answer(1, who="b")
        assert await a.gets() == answer(1, who="a")


async def test_progress_reaches_only_the_client_whose_request_asked_for_it() -> None:
    async with scripted() as up:
        a, b = two_clients(up)
        await a.sends(request(1, token=1, name="slow"))
        await b.sends(request(1, token=1, name="slow"))
        sent_a, sent_b = await up.hears(), await up.hears()
        assert isinstance(sent_a, types.JSONRPCRequest) and isinstance(sent_b, types.JSONRPCRequest)
        token_b = sent_b.params["_meta"]["progressToken"]  # type: ignore[index]
        assert token_b != sent_a.params["_meta"]["progressToken"]  # type: ignore[index]
        await up.says(
            types.JSONRPCNotification(
                jsonrpc="2.0", method="notifications/progress", params={"progressToken": token_b, "progress": 1}
            )
        )
        await up.says(MARKER)
        progress = await b.gets()
        assert isinstance(progress, types.JSONRPCNotification)
        assert progress.params == {"progressToken": 1, "progress": 1}
        await b.gets_marker_next()
        await a.gets_marker_next()


async def test_a_cancellation_reaches_the_upstream_under_that_clients_request_only() -> None:
    async with scripted() as up:
        a, b = two_clients(up)
        await a.sends(request(1, name="wait"))
        await b.sends(request(1, name="wait"))
        sent_a, sent_b = await up.hears(), await up.hears()
        assert isinstance(sent_a, types.JSONRPCRequest) and isinstance(sent_b, types.JSONRPCRequest)
        await a.sends(
            types.JSONRPCNotification(jsonrpc="2.0", method="notifications/cancelled", params={"requestId": 1})
        )
        cancelled = await up.hears()
        assert isinstance(cancelled, types.JSONRPCNotification)
        assert cancelled.params == {"requestId": sent_a.id}
        # A late answer to the cancelled request reaches nobody; the other client's still reaches it.
        await up.says(answer(sent_a.id, late=True))
        await up.says(answer(sent_b.id, done=True))
        await up.says(MARKER)
        assert await b.gets() == answer(1, done=True)
        await a.gets_marker_next()


async def test_a_cancellation_of_an_id_the_client_has_not_in_flight_is_dropped() -> None:
    async with scripted() as up:
        a, b = two_clients(up)
        await b.sends(request(7, name="wait"))
        sent_b = await up.hears()
        await a.sends(
            types.JSONRPCNotification(jsonrpc="2.0", method="notifications/cancelled", params={"requestId": 7})
        )
        await a.sends(request(2, method="ping"))
        # The next thing upstream is a's ping: b's request 7 was not cancelled for a.
        ping = await up.hears()
        assert isinstance(ping, types.JSONRPCRequest) and ping.method == "ping"
        assert isinstance(sent_b, types.JSONRPCRequest) and sent_b.id in up.shared._sent


async def test_an_answer_to_an_id_no_client_sent_and_a_second_answer_are_dropped() -> None:
    """Hostile upstream: it answers an id nobody is waiting for, then answers one request twice."""
    async with scripted() as up:
        a, b = two_clients(up)
        await up.says(answer(999, forged=True))
        await a.sends(request(1, name="echo"))
        sent = await up.hears()
        assert isinstance(sent, types.JSONRPCRequest)
        await up.says(answer(sent.id, n=1))
        await up.says(answer(sent.id, n=2))
        await up.says(MARKER)
        assert await a.gets() == answer(1, n=1)
        await a.gets_marker_next()
        await b.gets_marker_next()


async def test_an_upstream_request_goes_to_the_only_client_with_a_request_in_flight_and_its_answer_back() -> None:
    async with scripted() as up:
        a, b = two_clients(up)
        await a.sends(request(1, name="trigger-sampling-request"))
        await up.hears()
        await up.says(request("s-1", method="sampling/createMessage", maxTokens=5))
        await up.says(MARKER)
        asked = await a.gets()
        assert isinstance(asked, types.JSONRPCRequest) and asked.method == "sampling/createMessage"
        await b.gets_marker_next()
        await a.gets_marker_next()
        await a.sends(answer(asked.id, model="m"))
        assert await up.hears() == answer("s-1", model="m")


async def test_an_upstream_request_is_refused_when_which_client_it_is_for_cannot_be_told() -> None:
    async with scripted() as up:
        a, b = two_clients(up)
        await a.sends(request(1, name="wait"))
        await b.sends(request(1, name="wait"))
        await up.hears(), await up.hears()
        await up.says(request(5, method="elicitation/create", message="Pay?"))
        refusal = await up.hears()
        assert isinstance(refusal, types.JSONRPCError) and refusal.id == 5
        assert refusal.error.code == AMBIGUOUS
        assert "cannot tell which one" in refusal.error.message
        await up.says(MARKER)
        await a.gets_marker_next()
        await b.gets_marker_next()


async def test_an_upstream_request_goes_to_the_only_client_on_the_upstream_with_nothing_in_flight() -> None:
    """server-everything asks for roots 350 ms after `initialized`, tied to no request of the client's."""
    async with scripted() as up:
        only = Relayed(up.shared.attach())
        await up.says(request(5, method="roots/list"))
        asked = await only.gets()
        assert isinstance(asked, types.JSONRPCRequest) and asked.method == "roots/list"


async def test_an_upstream_request_with_no_client_in_flight_is_refused() -> None:
    async with scripted() as up:
        two_clients(up)
        await up.says(request(5, method="roots/list"))
        refusal = await up.hears()
        assert isinstance(refusal, types.JSONRPCError) and refusal.id == 5


async def test_an_upstream_request_reusing_an_id_still_awaiting_an_answer_is_dropped() -> None:
    """Hostile upstream: two requests under one id; the client's one answer goes back once."""
    async with scripted() as up:
        a, _ = two_clients(up)
        await a.sends(request(1, name="ask"))
        await up.hears()
        await up.says(request(9, method="elicitation/create", message="first"))
        await up.says(request(9, method="elicitation/create", message="second"))
        await up.says(MARKER)
        asked = await a.gets()
        assert isinstance(asked, types.JSONRPCRequest) and asked.params == {"message": "first"}
        await a.gets_marker_next()
        await a.sends(answer(asked.id, action="decline"))
        await a.sends(answer(asked.id, action="accept"))  # a second answer is not the upstream's business
        await a.sends(request(2, method="ping"))
        assert await up.hears() == answer(9, action="decline")
        ping = await up.hears()
        assert isinstance(ping, types.JSONRPCRequest) and ping.method == "ping"


async def test_a_client_cannot_answer_an_upstream_request_sent_to_another() -> None:
    async with scripted() as up:
        a, b = two_clients(up)
        await a.sends(request(1, name="ask"))
        await up.hears()
        await up.says(request(9, method="elicitation/create", message="for a"))
        asked = await a.gets()
        assert isinstance(asked, types.JSONRPCRequest)
        await b.sends(answer(asked.id, action="accept"))
        await b.sends(request(3, method="ping"))
        ping = await up.hears()
        assert isinstance(ping, types.JSONRPCRequest) and ping.method == "ping"


async def test_the_upstreams_ping_is_answered_by_guard() -> None:
    async with scripted() as up:
        two_clients(up)
        await up.says(request("p", method="ping"))
        assert await up.hears() == answer("p")


async def test_list_changed_goes_to_every_client_of_the_upstream() -> None:
    async with scripted() as up:
        a, b = two_clients(up)
        changed = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/tools/list_changed")
        await up.says(changed)
        assert await a.gets() == changed
        assert await b.gets() == changed


async def test_the_upstream_is_initialised_once_and_later_clients_get_its_result_under_their_own_id() -> None:
    """A later client asking another protocol version gets the version the upstream was initialised with (the
    spec's answer from a server that does not speak the asked one; the client decides whether to go on)."""
    async with scripted() as up:
        a, b = two_clients(up)
        await a.sends(request(0, method="initialize", protocolVersion="2025-11-25", capabilities={}))
        sent = await up.hears()
        assert isinstance(sent, types.JSONRPCRequest) and sent.method == "initialize"
        await b.sends(request("init-b", method="initialize", protocolVersion="2025-03-26", capabilities={}))
        await up.says(answer(sent.id, **INIT_RESULT))
        assert await a.gets() == answer(0, **INIT_RESULT)
        assert await b.gets() == answer("init-b", **INIT_RESULT)
        initialized = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/initialized")
        await a.sends(initialized)
        await b.sends(initialized)
        await b.sends(request(1, method="ping"))
        assert await up.hears() == initialized
        ping = await up.hears()  # not a second `initialized`
        assert isinstance(ping, types.JSONRPCRequest) and ping.method == "ping"


async def test_when_the_upstream_dies_every_client_reads_the_end_and_the_failure() -> None:
    async with scripted() as up:
        a, b = two_clients(up)
        await up.to_guard.aclose()
        for relayed in (a, b):
            with pytest.raises(StopAsyncIteration):
                await relayed.gets()
            assert relayed.client.link.failure() == "the scripted upstream exited with status 3"
        await up.shared.done.wait()


async def test_a_client_leaving_cancels_its_requests_upstream_and_the_last_one_leaving_closes_it() -> None:
    async with scripted(linger_s=0.0) as up:
        a, b = two_clients(up)
        await a.sends(request(1, name="wait"))
        sent = await up.hears()
        await up.shared.detach(a.client)
        assert await up.hears() == types.JSONRPCNotification(
            jsonrpc="2.0",
            method="notifications/cancelled",
            params={"requestId": sent.id, "reason": "the client left"},  # type: ignore[union-attr]
        )
        assert up.shared.open  # b is still on it
        await up.shared.detach(b.client)
        await up.shared.done.wait()
        assert not up.shared.open


async def test_two_relays_on_one_upstream_keep_their_own_sessions_and_answers() -> None:
    """Through real `Relay`s: each relay numbers its requests from 1, and the shared upstream numbers again."""
    async with scripted() as up:
        ports = []
        streams: list[Any] = []
        async with anyio.create_task_group() as tg:
            for name in ("a", "b"):
                to_relay, relay_reads = anyio.create_memory_object_stream[SessionMessage | Exception](8)
                relay_writes, from_relay = anyio.create_memory_object_stream[SessionMessage](8)
                link = up.shared.attach().link
                relay = Relay(Session(id=name), OpenGate(), ClientPort.of_streams(relay_reads, relay_writes), link)
                tg.start_soon(relay.run)
                ports.append((to_relay, from_relay))
                streams.extend((to_relay, relay_reads, relay_writes, from_relay))
            for to_relay, _ in ports:
                await to_relay.send(SessionMessage(request(1, method="resources/list")))
            first, second = await up.hears(), await up.hears()
            assert isinstance(first, types.JSONRPCRequest) and isinstance(second, types.JSONRPCRequest)
            assert {first.id, second.id} == {1, 2}
            await up.says(answer(second.id, resources=[], who="second"))
            await up.says(answer(first.id, resources=[], who="first"))
            got = {(await from_relay.receive()).message.result["who"] for _, from_relay in ports}  # type: ignore[union-attr]
            assert got == {"first", "second"}
            for to_relay, _ in ports:
                await to_relay.aclose()
        for stream in streams:
            await stream.aclose()


def test_the_default_mode_is_shared_and_unknown_modes_are_refused() -> None:
    assert DEFAULT_MODE == SHARED == Sharing().mode
    with pytest.raises(ConfigError, match="--upstream-sessions 'pooled'"):
        Sharing("pooled")


def test_a_warm_upstream_is_only_for_a_handshake_that_fits_and_the_pool_follows_one_that_did_not() -> None:
    """An upstream may offer tools by the capabilities the client declared (server-everything registers its
    sampling and elicitation tools only then): a session declaring others, or another protocol version, starts
    cold, and the pool's next upstreams are initialised as that session asked."""
    pool = WarmPool(StdioUpstream(("true",)), 2)
    assert pool.params == handshake("2025-11-25", {})
    assert pool.take(None) is None  # a 2026-07-28 session: no handshake to answer
    older = {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}
    assert pool.take(older) is None
    assert pool.params == handshake("2025-03-26", {})
    sampling = {**older, "capabilities": {"sampling": {}}}
    assert pool.take(sampling) is None
    assert pool.params == handshake("2025-03-26", {"sampling": {}})


async def test_an_initialize_cancelled_before_its_answer_leaves_no_client_waiting_and_the_next_goes_up() -> None:
    async with scripted() as up:
        a, b = two_clients(up)
        await a.sends(request(0, method="initialize", protocolVersion="2025-11-25", capabilities={}))
        first = await up.hears()
        await b.sends(request(0, method="initialize", protocolVersion="2025-11-25", capabilities={}))
        await a.sends(
            types.JSONRPCNotification(jsonrpc="2.0", method="notifications/cancelled", params={"requestId": 0})
        )
        assert isinstance(await up.hears(), types.JSONRPCNotification)  # the cancellation, under first's id
        failed = await b.gets()
        assert isinstance(failed, types.JSONRPCError) and failed.id == 0
        await b.sends(request(1, method="initialize", protocolVersion="2025-11-25", capabilities={}))
        again = await up.hears()
        assert isinstance(again, types.JSONRPCRequest) and again.method == "initialize"
        assert isinstance(first, types.JSONRPCRequest) and again.id != first.id


async def test_a_client_that_stops_reading_is_cut_off_and_the_others_go_on() -> None:
    async with scripted() as up:
        stalled, reading = two_clients(up)
        await reading.sends(request(1))
        sent = await up.hears()
        assert isinstance(sent, types.JSONRPCRequest)
        # More broadcasts than a client may leave unread: `reading` reads each, `stalled` none.
        for _ in range(CLIENT_BUFFER + 1):
            await up.says(MARKER)
            await reading.gets_marker_next()
        await up.says(answer(sent.id, done=True))
        assert await reading.gets() == answer(1, done=True)

        left = [item async for item in stalled.client.link.messages]
        assert len(left) == CLIENT_BUFFER  # what it had been sent before it was cut off, then the end
        assert f"left {CLIENT_BUFFER} messages unread" in stalled.client.link.failure()
