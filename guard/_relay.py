"""The relay: carries every MCP message between one client session and one upstream session.

Messages are parsed once by the SDK's transports and forwarded as they are. Exactly two methods are
intercepted, both through the `Gate`:

- `tools/call`: the gate gets the call and a `forward` function; it may answer itself (a denial)
  or call `forward()` to send the call upstream and get the upstream's result back.
- `tools/list`: the upstream's answer passes through `Gate.list_tools` on its way back.

Everything else (initialize/discover, resources, prompts, completions, logging, ping, progress,
cancellation, list_changed, server-to-client requests) passes through unchanged, in both protocol eras.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

import anyio
import mcp_types as types
from mcp.shared.message import ClientMessageMetadata, ServerMessageMetadata, SessionMessage
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from guard._limits import DEFAULT_LIMITS, Limits
from guard._redact import redact
from guard._upstream import UpstreamLink

logger = logging.getLogger("guard.relay")

JSON = dict[str, Any]
T = TypeVar("T")

# A JSON-RPC error code of our own for "the upstream is gone" (in the implementation-defined range).
UPSTREAM_UNAVAILABLE = -32003
# The `_meta` keys of the 2026-07-28 per-request envelope.
ENVELOPE_PREFIX = "io.modelcontextprotocol/"
# How long requests in flight may take to answer once the client or the upstream has gone.
CALL_DRAIN_S = 5.0
# How long a failed write waits for the reader to learn why the upstream went away (its exit status and
# stderr come a moment after its pipe breaks; see `_upstream.EXIT_GRACE_S`).
UPSTREAM_EXIT_WAIT_S = 3.0


@dataclass(frozen=True)
class Session:
    """One client session: the budget "session" of later layers."""

    id: str
    identity: str | None = None
    transport: Literal["stdio", "http"] = "stdio"


@dataclass(frozen=True)
class ToolCall:
    """A `tools/call` as the gate sees it."""

    session: Session
    request_id: types.RequestId
    name: str
    arguments: JSON
    meta: JSON | None


class UpstreamError(Exception):
    """The upstream answered a forwarded call with a JSON-RPC error, or went away before answering."""

    def __init__(self, error: types.ErrorData) -> None:
        super().__init__(error.message)
        self.error = error


Background = Callable[[], Coroutine[Any, Any, None]]
"""A task a front runs while it serves (a policy watcher, a heartbeat); cancelled when it stops."""

Forward = Callable[[], Awaitable[JSON]]
"""Send the call upstream; return the upstream's `CallToolResult` as JSON. Raises `UpstreamError`."""


class Gate(Protocol):
    """The one interception point. Later layers (policy, ledger, adapters) live behind it."""

    async def call_tool(self, call: ToolCall, forward: Forward) -> JSON:
        """Return the result for the client: a denial without calling `forward`, or the upstream's."""
        ...

    async def list_tools(self, session: Session, result: JSON) -> JSON:
        """Return the `tools/list` result the client sees."""
        ...

    def subscribe(self, session: Session, link: SessionLink) -> Callable[[], None]:
        """Keep `link` to reach this session while it lasts (to tell its client the tools changed, to
        ask its upstream for a balance); return how to unsubscribe."""
        ...


class SessionLink(Protocol):
    """What a gate may do with a live session besides answering its calls."""

    async def tools_changed(self) -> None:
        """Send the client `notifications/tools/list_changed`."""
        ...

    async def call(self, name: str, arguments: JSON) -> JSON:
        """Make a `tools/call` of the guard's own on this session's upstream; return its result.
        Raises `UpstreamError`."""
        ...


class OpenGate:
    """Forwards everything unchanged: the relay with no policy."""

    async def call_tool(self, call: ToolCall, forward: Forward) -> JSON:
        return await forward()

    async def list_tools(self, session: Session, result: JSON) -> JSON:
        return result

    def subscribe(self, session: Session, link: SessionLink) -> Callable[[], None]:
        return lambda: None


@dataclass(frozen=True)
class ClientPort:
    """The client's side of a relay: its messages, and how to send it messages and hang up."""

    messages: AsyncIterable[SessionMessage | Exception]
    send: Callable[[SessionMessage], Awaitable[None]]
    close: Callable[[], Awaitable[None]]

    @classmethod
    def of_streams(cls, read: Any, write: Any) -> ClientPort:
        """A port over the SDK transports' (read, write) memory streams."""
        return cls(read, write.send, write.aclose)


Reply = types.JSONRPCResponse | types.JSONRPCError | None
"""What a forwarded call gets back: the upstream's response, or None when the upstream is gone."""


class Relay:
    """Pumps messages between one client and one upstream until either side closes."""

    def __init__(
        self, session: Session, gate: Gate, client: ClientPort, upstream: UpstreamLink, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        self.session = session
        self._limits = limits
        self._gate = gate
        self._client = client
        self._upstream = upstream
        # Client requests sent upstream and not yet answered, with their transport metadata.
        self._inflight: dict[types.RequestId, ServerMessageMetadata | None] = {}
        # Upstream responses the relay consumes itself (forwarded tools/call) instead of passing on.
        self._waiters: dict[types.RequestId, asyncio.Future[Reply]] = {}
        self._tool_lists: set[types.RequestId] = set()
        # tools/call in the gate, each in its own task. Plain asyncio tasks: an anyio task group
        # spawn costs four times as much, on the hot path of every call.
        self._calls: dict[types.RequestId, asyncio.Task[None]] = {}
        self._call_metadata: dict[types.RequestId, ServerMessageMetadata] = {}
        # Progress tokens of requests in flight, both ways round, to route progress on an HTTP front.
        self._progress: dict[types.ProgressToken, types.RequestId] = {}
        self._progress_of: dict[types.RequestId, types.ProgressToken] = {}
        self._gone: str | None = None
        self._gone_known = anyio.Event()  # set once `_gone` says why the upstream went away
        self._own_calls = 0  # tools/call the guard made itself (balance refreshes)
        self._era_meta: JSON | None = None  # the client's 2026-07-28 protocol-version _meta, to copy
        self._answered = anyio.Event()  # set whenever a client request gets its answer

    async def run(self) -> str | None:
        """Relay until the client closes (returns None) or the upstream goes away (returns why).

        Like an SDK server loop, the relay hangs up on the client when it is done.
        """
        unsubscribe = self._gate.subscribe(self.session, self)
        try:
            await self._run()
        finally:
            unsubscribe()
            with (
                anyio.CancelScope(shield=True),
                suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError),
            ):
                await self._client.close()
        return self._gone

    async def _run(self) -> None:
        try:
            async with anyio.create_task_group() as pumps:
                self._pumps = pumps
                pumps.start_soon(self._from_upstream)
                await self._from_client()
                # The client closed its side: answers already on their way still reach it (bounded).
                with anyio.move_on_after(CALL_DRAIN_S):
                    while (self._inflight or self._calls) and self._gone is None:
                        await self._answered.wait()
                        self._answered = anyio.Event()
                pumps.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._end_calls()

    async def _end_calls(self) -> None:
        """Cancel the calls still in the gate; after an upstream failure, first give them a moment to
        deliver it to the client. (The client leaving: nobody is waiting for their answers.)"""
        calls = list(self._calls.values())
        if calls and self._gone is not None:
            await asyncio.wait(calls, timeout=CALL_DRAIN_S)
        for task in calls:
            task.cancel()
        if calls:
            await asyncio.wait(calls)

    # client -> upstream

    async def _from_client(self) -> None:
        # A front may close its side under us (an HTTP DELETE): that is the client leaving.
        with suppress(anyio.ClosedResourceError, anyio.EndOfStream):
            await self._pump_client()

    async def _pump_client(self) -> None:
        async with _closing(self._client.messages) as messages:
            await self._each_client_message(messages)

    async def _each_client_message(self, messages: AsyncIterable[SessionMessage | Exception]) -> None:
        async for item in messages:
            if isinstance(item, Exception):
                why = _invalid(item)
                logger.warning("client sent an unreadable message: %s", why)
                await self._reply_error(None, types.PARSE_ERROR, f"Parse error: {why}")
                continue
            message = item.message
            metadata = item.metadata if isinstance(item.metadata, ServerMessageMetadata) else None
            if isinstance(message, types.JSONRPCRequest):
                await self._client_request(message, metadata)
            elif isinstance(message, types.JSONRPCNotification) and message.method == "notifications/cancelled":
                await self._client_cancelled(message)
            else:
                await self._to_upstream(message)

    async def _client_request(self, request: types.JSONRPCRequest, metadata: ServerMessageMetadata | None) -> None:
        if self._gone is not None:
            await self._reply_error(request.id, UPSTREAM_UNAVAILABLE, self._gone)
            return
        meta = (request.params or {}).get("_meta")
        if isinstance(meta, dict) and (token := meta.get("progressToken")) is not None:
            self._progress[token] = request.id
            self._progress_of[request.id] = token
        if request.method == "tools/call":
            task = asyncio.get_running_loop().create_task(self._tool_call(request, metadata))
            self._calls[request.id] = task
            task.add_done_callback(partial(self._call_done, request.id))
            return
        if request.method == "tools/list":
            self._tool_lists.add(request.id)
        self._inflight[request.id] = metadata
        await self._to_upstream(request)

    def _call_done(self, request_id: types.RequestId, task: asyncio.Task[None]) -> None:
        if self._calls.get(request_id) is task:
            del self._calls[request_id]
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("tools/call %s failed inside the relay", request_id, exc_info=exc)

    def _forget(self, request_id: types.RequestId) -> None:
        """Drop what the relay kept about a request once it is answered or cancelled."""
        self._tool_lists.discard(request_id)
        if (token := self._progress_of.pop(request_id, None)) is not None:
            self._progress.pop(token, None)

    async def _client_cancelled(self, note: types.JSONRPCNotification) -> None:
        request_id = (note.params or {}).get("requestId")
        forwarded = request_id in self._inflight or request_id in self._waiters
        self._forget(request_id)  # type: ignore[arg-type]
        metadata = self._inflight.pop(request_id, None)  # type: ignore[arg-type]
        if (task := self._calls.pop(request_id, None)) is not None:  # type: ignore[arg-type]
            task.cancel()
            metadata = self._call_metadata.pop(request_id, None)  # type: ignore[arg-type]
        if forwarded:
            await self._to_upstream(note)
        # Cancelled requests get no response; an HTTP front must still close that request's stream.
        if metadata is not None and metadata.on_request_unanswered is not None:
            await metadata.on_request_unanswered()

    async def _tool_call(self, request: types.JSONRPCRequest, metadata: ServerMessageMetadata | None) -> None:
        params = request.params or {}
        name, arguments, meta = params.get("name"), params.get("arguments", {}), params.get("_meta")
        if not isinstance(name, str) or not isinstance(arguments, dict) or not isinstance(meta, dict | None):
            # Unparseable: a JSON-RPC error, and never forwarded.
            await self._reply_error(
                request.id,
                types.INVALID_PARAMS,
                "Invalid tools/call params: 'name' must be a string and 'arguments' an object",
            )
            return
        call = ToolCall(self.session, request.id, name, arguments, meta)
        if isinstance(meta, dict) and types.PROTOCOL_VERSION_META_KEY in meta:
            # The 2026-07-28 per-request envelope (version, client capabilities, client info).
            self._era_meta = {k: v for k, v in meta.items() if k.startswith(ENVELOPE_PREFIX)}

        async def forward() -> JSON:
            return await self._exchange(request)

        if metadata is not None:
            self._call_metadata[request.id] = metadata
        try:
            result = await self._gate.call_tool(call, forward)
        except UpstreamError as exc:
            await self._send_client(types.JSONRPCError(jsonrpc="2.0", id=request.id, error=exc.error))
        except Exception:
            # Fail closed: the gate could not evaluate the call, so the client learns it was not handled.
            logger.exception("gate failed on tools/call %s", name)
            await self._reply_error(request.id, types.INTERNAL_ERROR, f"guard could not evaluate the call to {name}")
        else:
            if isinstance(meta, dict) and types.PROTOCOL_VERSION_META_KEY in meta and "resultType" not in result:
                # The 2026-07-28 wire requires every result to say its type; the gate's own answers (a
                # denial, guard-budget) are complete results.
                result = {**result, "resultType": "complete"}
            await self._send_client(types.JSONRPCResponse(jsonrpc="2.0", id=request.id, result=result))
        finally:
            self._call_metadata.pop(request.id, None)

    async def _to_upstream(self, message: types.JSONRPCMessage) -> None:
        metadata = _routing(message) if self._upstream.wants_routing_headers else None
        try:
            await self._upstream.send(SessionMessage(message, metadata=metadata))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            if isinstance(message, types.JSONRPCRequest):
                self._inflight.pop(message.id, None)
                waiter = self._waiters.get(message.id)
                if waiter is not None:
                    if not waiter.done():
                        waiter.set_result(None)
                else:
                    await self._reply_error(message.id, UPSTREAM_UNAVAILABLE, await self._why_gone())

    # upstream -> client

    async def _from_upstream(self) -> None:
        with suppress(anyio.ClosedResourceError, anyio.EndOfStream):
            await self._pump_upstream()
        await self._upstream_gone()

    async def _pump_upstream(self) -> None:
        async with _closing(self._upstream.messages) as messages:
            await self._each_upstream_message(messages)

    async def _each_upstream_message(self, messages: AsyncIterable[SessionMessage | Exception]) -> None:
        async for item in messages:
            if isinstance(item, Exception):
                logger.warning("%s", redact(str(item)))
                continue
            message = item.message
            if isinstance(message, types.JSONRPCResponse | types.JSONRPCError) and message.id is not None:
                if (waiter := self._waiters.get(message.id)) is not None:
                    self._forget(message.id)
                    if not waiter.done():
                        waiter.set_result(message)
                    continue
                self._inflight.pop(message.id, None)
                listed = message.id in self._tool_lists
                self._forget(message.id)
                if listed and isinstance(message, types.JSONRPCResponse):
                    message = await self._filtered_tools(message)
            await self._send_client(message, _related_request(message, self._progress))

    async def _filtered_tools(self, response: types.JSONRPCResponse) -> types.JSONRPCResponse | types.JSONRPCError:
        try:
            result = await self._gate.list_tools(self.session, response.result)
        except Exception:
            logger.exception("gate failed on tools/list")
            return types.JSONRPCError(
                jsonrpc="2.0",
                id=response.id,
                error=types.ErrorData(code=types.INTERNAL_ERROR, message="guard could not evaluate tools/list"),
            )
        return types.JSONRPCResponse(jsonrpc="2.0", id=response.id, result=result)

    # what the gate may do besides answering calls (`SessionLink`)

    async def tools_changed(self) -> None:
        note = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/tools/list_changed")
        await self._send_client(note)

    async def call(self, name: str, arguments: JSON) -> JSON:
        self._own_calls += 1
        params: JSON = {"name": name, "arguments": arguments}
        if self._era_meta is not None:  # a 2026-07-28 upstream wants the protocol version on every request
            params["_meta"] = self._era_meta
        request = types.JSONRPCRequest(jsonrpc="2.0", id=f"guard-{self._own_calls}", method="tools/call", params=params)
        return await self._exchange(request)

    async def _exchange(self, request: types.JSONRPCRequest) -> JSON:
        """Send a tools/call upstream and wait for its answer, which the relay keeps for itself."""
        if self._gone is not None:
            raise UpstreamError(types.ErrorData(code=UPSTREAM_UNAVAILABLE, message=self._gone))
        waiter = self._waiters[request.id] = asyncio.get_running_loop().create_future()
        try:
            await self._to_upstream(request)
            reply = await waiter
        finally:
            self._waiters.pop(request.id, None)
        if isinstance(reply, types.JSONRPCResponse):
            return reply.result
        gone = types.ErrorData(code=UPSTREAM_UNAVAILABLE, message=self._gone or self._upstream.failure())
        raise UpstreamError(reply.error if reply else gone)

    async def _why_gone(self) -> str:
        """Why the upstream cannot take a message. A write can fail before the reader has seen the upstream
        exit: wait (bounded) for its exit story rather than answer with a vaguer one."""
        with anyio.move_on_after(UPSTREAM_EXIT_WAIT_S):
            await self._gone_known.wait()
        return self._gone or self._upstream.failure()

    async def _upstream_gone(self) -> None:
        """Answer everything still pending with why the upstream went away, then end the relay."""
        self._gone = self._upstream.failure()
        self._gone_known.set()
        logger.error("%s", self._gone)
        for waiter in list(self._waiters.values()):
            if not waiter.done():
                waiter.set_result(None)
        for request_id in list(self._inflight):
            self._inflight.pop(request_id, None)
            await self._reply_error(request_id, UPSTREAM_UNAVAILABLE, self._gone)
        self._pumps.cancel_scope.cancel()

    async def _send_client(self, message: types.JSONRPCMessage, metadata: ServerMessageMetadata | None = None) -> None:
        try:
            await self._client.send(SessionMessage(message, metadata=metadata))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            logger.debug("client went away before %s could be delivered", type(message).__name__)
        if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
            self._answered.set()

    async def _reply_error(self, request_id: types.RequestId | None, code: int, message: str) -> None:
        error = types.JSONRPCError(jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=message))
        await self._send_client(error)


def _invalid(exc: Exception) -> str:
    """Why a message could not be read, without echoing its content: it may carry an invoice or a token
    (pydantic's own message quotes the input, truncated past where a redactor could see its keys)."""
    if isinstance(exc, ValidationError):
        return "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False, include_url=False)
        )
    return redact(str(exc))


@asynccontextmanager
async def _closing(messages: AsyncIterable[T]) -> AsyncIterator[AsyncIterable[T]]:
    """Finalize a message generator in the task that iterated it (not later, at garbage collection)."""
    try:
        yield messages
    finally:
        if isinstance(messages, AsyncGenerator):
            with anyio.CancelScope(shield=True):
                await messages.aclose()


def _related_request(
    message: types.JSONRPCMessage, progress: Mapping[Any, types.RequestId]
) -> ServerMessageMetadata | None:
    """Tell an HTTP front which request's stream a progress notification belongs on."""
    if isinstance(message, types.JSONRPCNotification) and message.method == "notifications/progress":
        request_id = progress.get((message.params or {}).get("progressToken"))
        if request_id is not None:
            return ServerMessageMetadata(related_request_id=request_id)
    return None


def _routing(message: types.JSONRPCMessage) -> ClientMessageMetadata | None:
    """The per-request HTTP headers a 2026-07-28 request needs when the upstream speaks streamable HTTP."""
    if not isinstance(message, types.JSONRPCRequest | types.JSONRPCNotification):
        return None
    params = message.params or {}
    meta = params.get("_meta")
    version = meta.get(types.PROTOCOL_VERSION_META_KEY) if isinstance(meta, dict) else None
    if version not in MODERN_PROTOCOL_VERSIONS:
        return None
    headers = {"mcp-protocol-version": version, "mcp-method": message.method}
    name_key = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}.get(message.method)
    if name_key is not None and isinstance(name := params.get(name_key), str) and name.isascii():
        headers["mcp-name"] = name
    return ClientMessageMetadata(headers=headers)
