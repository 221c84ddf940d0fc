"""The relay: carries every MCP message between one client session and one upstream session.

Messages are parsed once and forwarded. Exactly two methods are intercepted, both through the `Gate`:

- `tools/call`: the gate gets the call and a `forward` function; it may answer itself (a denial)
  or call `forward()` to send the call upstream and get the upstream's result back.
- `tools/list`: the upstream's answer passes through `Gate.list_tools` on its way back.

Everything else (initialize/discover, resources, prompts, completions, logging, ping, progress,
cancellation, list_changed, server-to-client requests) passes through, in both protocol eras, with one
change: guard owns the ids of the requests it sends upstream. Each gets a fresh id from the relay's one
counter (the guard's own calls draw from it too), which is also its progress token; the answer and the
progress are mapped back to the client's id and token. So one request can never take another's answer: a
client id already in flight is refused, an upstream answer to an id guard did not send (or a second
answer) is dropped, and a request the upstream does not answer in time gets an error of guard's own.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio
import mcp_types as types
from mcp.shared.message import ClientMessageMetadata, ServerMessageMetadata, SessionMessage
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import ValidationError

from guard.core import JSON, Gate, Session, ToolCall
from guard.errors import MessageRefused, UpstreamError
from guard.proxy.limits import DEFAULT_LIMITS, Limits
from guard.proxy.upstream import UpstreamLink
from guard.proxy.wire import tool_named, usable_id
from guard.redact import redact
from guard.text import short

logger = logging.getLogger("guard.relay")

T = TypeVar("T")

# A JSON-RPC error code of our own for "the upstream is gone" (in the implementation-defined range).
UPSTREAM_UNAVAILABLE = -32003
# The upstream's own errors that prove it did not run a request: it could not read it, or refused it before
# running anything. Any other error (a tool that failed; guard's own "no answer in time", "upstream gone")
# may come after a payment left.
NOT_RUN = frozenset({types.PARSE_ERROR, types.INVALID_REQUEST, types.METHOD_NOT_FOUND, types.INVALID_PARAMS})
# The `_meta` keys of the 2026-07-28 per-request envelope.
ENVELOPE_PREFIX = "io.modelcontextprotocol/"
# How long requests in flight may take to answer once the client or the upstream has gone.
CALL_DRAIN_S = 5.0
# How long a failed write waits for the reader to learn why the upstream went away (its exit status and
# stderr come a moment after its pipe breaks; see `upstream.EXIT_GRACE_S`).
UPSTREAM_EXIT_WAIT_S = 3.0
# How long telling the upstream that an overdue request is cancelled may take (its input may be full).
CANCEL_SEND_S = 1.0


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


@dataclass(eq=False)
class _Call:
    """A tools/call in the gate, until answered."""

    metadata: ServerMessageMetadata | None
    # Nobody waits for its answer any more (the client cancelled it, or left) and, if it was not forwarded
    # yet, it never will be: the gate then voids its hold.
    withdrawn: bool = False
    task: asyncio.Task[None] = field(init=False)


@dataclass(eq=False)
class _Forwarded:
    """A request sent upstream under guard's own id, until it is answered, cancelled or overdue."""

    method: str
    deadline: float  # on the event loop's clock
    client_id: types.RequestId | None  # None: a call of the guard's own
    progress_token: types.ProgressToken | None  # the client's, put back on the upstream's progress
    metadata: ServerMessageMetadata | None = None
    # Set when the relay keeps the answer (a tools/call the gate forwarded, a call of the guard's own); else
    # the answer goes to the client.
    waiter: asyncio.Future[types.JSONRPCResponse | UpstreamError] | None = None


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
        # The ids (and progress tokens) of every request sent upstream, the guard's own calls included.
        self._ids = itertools.count(1)
        # Requests sent upstream and not yet answered, by guard's id, oldest (so nearest deadline) first.
        self._forwarded: dict[int, _Forwarded] = {}
        self._forwarded_added = asyncio.Event()
        # Client requests in flight upstream: the client's id -> guard's id.
        self._upstream_ids: dict[types.RequestId, int] = {}
        # Each tools/call runs in its own task until it ends. Plain asyncio tasks: an anyio task group
        # spawn costs four times as much, on the hot path of every call.
        self._call_tasks: set[asyncio.Task[None]] = set()
        # tools/call not yet answered, by the client's id.
        self._calls: dict[types.RequestId, _Call] = {}
        self._gone: str | None = None
        self._gone_known = anyio.Event()  # set once `_gone` says why the upstream went away
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
                pumps.start_soon(self._expire_overdue)
                await self._from_client()
                # The client closed its side: answers already on their way still reach it (bounded).
                with anyio.move_on_after(CALL_DRAIN_S):
                    while (self._forwarded or self._call_tasks) and self._gone is None:
                        await self._answered.wait()
                        self._answered = anyio.Event()
                pumps.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._end_calls()

    async def _end_calls(self) -> None:
        """Let the calls still in the gate end (bounded), then cancel what is left. After an upstream failure
        each one tells the client why; when the client left, nobody waits for their answers: a call not yet
        forwarded never will be (its hold is voided), a forwarded one is cancelled (its hold stays in doubt)."""
        if self._gone is None:
            for request_id, call in self._calls.items():
                call.withdrawn = True
                if request_id in self._upstream_ids:
                    call.task.cancel()
        tasks = list(self._call_tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=CALL_DRAIN_S)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

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
            if isinstance(item, MessageRefused):
                await self._refuse(item)
                continue
            if isinstance(item, Exception):
                why = _invalid(item)
                logger.warning("client sent an unreadable message: %s", why)
                await self._reply_error(None, types.PARSE_ERROR, f"Parse error: {why}")
                continue
            message = item.message
            metadata = item.metadata if isinstance(item.metadata, ServerMessageMetadata) else None
            if isinstance(message, types.JSONRPCRequest):
                await self._client_request(message, metadata)
            elif isinstance(message, types.JSONRPCNotification):
                await self._client_notification(message)
            else:  # the client's answer to a request of the upstream's (sampling, elicitation, roots)
                await self._to_upstream(message)

    async def _client_request(self, request: types.JSONRPCRequest, metadata: ServerMessageMetadata | None) -> None:
        if self._gone is not None:
            await self._reply_error(request.id, UPSTREAM_UNAVAILABLE, self._gone)
            return
        is_call = request.method == "tools/call"
        if request.id in self._calls or request.id in self._upstream_ids:
            # Its answer could not be told from the first one's: refused, so no answer goes to the wrong request.
            reason = "Invalid request: a request with this id is already in flight"
            tool = tool_named(request.params) if is_call else None
            await self._refuse(MessageRefused(types.INVALID_REQUEST, reason, request.id, tool=tool))
            return
        if is_call:
            call = self._calls[request.id] = _Call(metadata)
            call.task = asyncio.get_running_loop().create_task(self._tool_call(request, call))
            self._call_tasks.add(call.task)
            call.task.add_done_callback(partial(self._call_done, request.id, call))
            return
        upstream_request = self._track(request.method, request.params, request.id, metadata)
        if not await self._to_upstream(upstream_request):
            self._untrack(upstream_request.id)
            await self._reply_error(request.id, UPSTREAM_UNAVAILABLE, await self._why_gone())

    async def _client_notification(self, note: types.JSONRPCNotification) -> None:
        if note.method == "notifications/cancelled":
            await self._client_cancelled(note)
        elif note.method.startswith("notifications/"):
            await self._to_upstream(note)
        else:
            # A request without an id: nothing could be answered, and it must not reach the upstream undecided.
            reason = f"a request without an id is dropped ({short(note.method)})"
            tool = tool_named(note.params) if note.method == "tools/call" else None
            await self._refuse(MessageRefused(types.INVALID_REQUEST, reason, answerable=False, tool=tool))

    async def _refuse(self, refusal: MessageRefused) -> None:
        """Answer (when anyone waits) and log a client message the relay will not act on; a refused tools/call
        also goes to the audit trail."""
        logger.warning("refused a client message: %s", refusal.message)
        if refusal.tool is not None:
            try:
                self._gate.call_refused(self.session, refusal.tool, refusal.message)
            except Exception:
                logger.exception("the gate could not record a refused tools/call")
        if refusal.answerable:
            await self._reply_error(refusal.request_id, refusal.code, refusal.message)

    def _call_done(self, request_id: types.RequestId, call: _Call, task: asyncio.Task[None]) -> None:
        self._call_tasks.discard(task)
        self._answering(request_id, call)
        if not task.cancelled() and (exc := task.exception()) is not None:
            logger.error("tools/call %s failed inside the relay", short(str(request_id)), exc_info=exc)

    def _answering(self, request_id: types.RequestId, call: _Call) -> None:
        """The call's id is free again (a client may reuse it as soon as it reads the answer)."""
        if self._calls.get(request_id) is call:
            del self._calls[request_id]

    async def _client_cancelled(self, note: types.JSONRPCNotification) -> None:
        params = note.params or {}
        request_id = params.get("requestId")
        if not usable_id(request_id):  # the wire refuses these; no front may make the relay fail on one
            return
        metadata = None
        forwarded_id = self._upstream_ids.get(request_id)
        if forwarded_id is not None:
            forwarded = self._untrack(forwarded_id)
            metadata = forwarded.metadata if forwarded is not None else None
            reason = params.get("reason")
            await self._cancel_upstream(forwarded_id, reason if isinstance(reason, str) else None)
        if (call := self._calls.pop(request_id, None)) is not None:
            metadata = call.metadata
            call.withdrawn = True
            if forwarded_id is not None:  # its payment may be on its way: the gate keeps it in doubt
                call.task.cancel()
        # Cancelled requests get no response; an HTTP front must still close that request's stream.
        if metadata is not None and metadata.on_request_unanswered is not None:
            await metadata.on_request_unanswered()

    async def _tool_call(self, request: types.JSONRPCRequest, entry: _Call) -> None:
        params = request.params or {}
        name, arguments, meta = params.get("name"), params.get("arguments", {}), params.get("_meta")
        if not isinstance(name, str) or not isinstance(arguments, dict) or not isinstance(meta, dict | None):
            # Unparseable: a JSON-RPC error, and never forwarded.
            self._answering(request.id, entry)
            reason = "Invalid tools/call params: 'name' must be a string and 'arguments' an object"
            await self._refuse(MessageRefused(types.INVALID_PARAMS, reason, request.id, tool=tool_named(params)))
            return
        call = ToolCall(self.session, request.id, name, arguments, meta)
        if isinstance(meta, dict) and types.PROTOCOL_VERSION_META_KEY in meta:
            # The 2026-07-28 per-request envelope (version, client capabilities, client info).
            self._era_meta = {k: v for k, v in meta.items() if k.startswith(ENVELOPE_PREFIX)}

        async def forward(meta: JSON | None = None) -> JSON:
            if entry.withdrawn:
                raise UpstreamError(types.INTERNAL_ERROR, "cancelled before guard forwarded it", not_run=True)
            sent = request.params
            if meta:  # the gate's own entries (guard's trace context) replace the client's of the same name
                sent = {**params, "_meta": {**(params.get("_meta") or {}), **meta}}
            return await self._exchange(request.method, sent, request.id)

        answer: types.JSONRPCMessage
        try:
            result = await self._gate.call_tool(call, forward)
        except UpstreamError as exc:
            answer = types.JSONRPCError(jsonrpc="2.0", id=request.id, error=_error_data(exc))
        except Exception:
            # Fail closed: the gate could not evaluate the call, so the client learns it was not handled.
            logger.exception("gate failed on tools/call %s", name)
            error = types.ErrorData(code=types.INTERNAL_ERROR, message=f"guard could not evaluate the call to {name}")
            answer = types.JSONRPCError(jsonrpc="2.0", id=request.id, error=error)
        else:
            if isinstance(meta, dict) and types.PROTOCOL_VERSION_META_KEY in meta and "resultType" not in result:
                # The 2026-07-28 wire requires every result to say its type; the gate's own answers (a
                # denial, guard-budget) are complete results.
                result = {**result, "resultType": "complete"}
            answer = types.JSONRPCResponse(jsonrpc="2.0", id=request.id, result=result)
        if not entry.withdrawn:  # a cancelled request gets no answer
            self._answering(request.id, entry)
            await self._send_client(answer)

    def _track(
        self,
        method: str,
        params: JSON | None,
        client_id: types.RequestId | None,
        metadata: ServerMessageMetadata | None = None,
        waiter: asyncio.Future[types.JSONRPCResponse | UpstreamError] | None = None,
    ) -> types.JSONRPCRequest:
        """The request to send upstream: the client's (or the guard's own), under a fresh id of the guard's, its
        progress token (if any) replaced by that id too; kept until answered, cancelled or overdue."""
        upstream_id = next(self._ids)
        token = None
        if params is not None and isinstance(meta := params.get("_meta"), dict) and "progressToken" in meta:
            token = meta["progressToken"] if usable_id(meta["progressToken"]) else None
            params = {**params, "_meta": {**meta, "progressToken": upstream_id}}
        deadline = asyncio.get_running_loop().time() + self._limits.request_timeout_s
        self._forwarded[upstream_id] = _Forwarded(method, deadline, client_id, token, metadata, waiter)
        if client_id is not None:
            self._upstream_ids[client_id] = upstream_id
        self._forwarded_added.set()
        if params is None:
            return types.JSONRPCRequest(jsonrpc="2.0", id=upstream_id, method=method)
        return types.JSONRPCRequest(jsonrpc="2.0", id=upstream_id, method=method, params=params)

    def _untrack(self, upstream_id: types.RequestId) -> _Forwarded | None:
        """Stop waiting for an answer to `upstream_id`; what was waiting for it, if anything still was."""
        forwarded = self._forwarded.pop(upstream_id, None) if type(upstream_id) is int else None
        if forwarded is not None and forwarded.client_id is not None:
            self._upstream_ids.pop(forwarded.client_id, None)
        return forwarded

    async def _to_upstream(self, message: types.JSONRPCMessage) -> bool:
        """Send a message upstream; False if the upstream can no longer take it."""
        metadata = _routing(message) if self._upstream.wants_routing_headers else None
        try:
            await self._upstream.send(SessionMessage(message, metadata=metadata))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            return False
        return True

    async def _cancel_upstream(self, upstream_id: int, reason: str | None) -> None:
        params: JSON = {"requestId": upstream_id}
        if reason is not None:
            params["reason"] = reason
        await self._to_upstream(
            types.JSONRPCNotification(jsonrpc="2.0", method="notifications/cancelled", params=params)
        )

    async def _expire_overdue(self) -> None:
        """Give up on requests the upstream has not answered by their deadline. One timer for all: every
        request gets the same time from when it is sent, so the oldest one has the nearest deadline.
        (Progress does not extend a deadline: an upstream that keeps reporting progress cannot hold a call,
        or a payment's outcome, open for ever.)"""
        loop = asyncio.get_running_loop()
        while True:
            if not self._forwarded:
                self._forwarded_added.clear()
                await self._forwarded_added.wait()
                continue
            upstream_id, forwarded = next(iter(self._forwarded.items()))
            if (left := forwarded.deadline - loop.time()) > 0:
                await asyncio.sleep(left)
                continue
            self._untrack(upstream_id)
            timeout = self._limits.request_timeout_s
            why = f"the upstream did not answer {short(forwarded.method)} within {timeout:g} s; guard cancelled it"
            logger.warning("%s", why)
            await self._no_answer(forwarded, UpstreamError(types.REQUEST_TIMEOUT, why))
            # An upstream that does not read its input must not hold up the other deadlines.
            with anyio.move_on_after(CANCEL_SEND_S):
                await self._cancel_upstream(upstream_id, f"no answer within {timeout:g} s")

    async def _no_answer(self, forwarded: _Forwarded, error: UpstreamError) -> None:
        """Tell whoever waits for a forwarded request that no answer will come, and why."""
        if forwarded.waiter is not None:
            if not forwarded.waiter.done():
                forwarded.waiter.set_result(error)
        elif forwarded.client_id is not None:
            await self._send_client(types.JSONRPCError(jsonrpc="2.0", id=forwarded.client_id, error=_error_data(error)))

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
            if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
                await self._upstream_answered(message)
            elif isinstance(message, types.JSONRPCNotification) and message.method == "notifications/progress":
                await self._upstream_progress(message)
            else:  # a notification, or a request of the upstream's to the client
                await self._send_client(message)

    async def _upstream_answered(self, answer: types.JSONRPCResponse | types.JSONRPCError) -> None:
        forwarded = self._untrack(answer.id) if answer.id is not None else None
        if forwarded is None:
            # An id guard never sent, or one already answered, cancelled or overdue: nobody waits for it.
            logger.warning("dropped an upstream %s that answers no request in flight", type(answer).__name__)
            return
        if forwarded.waiter is not None:
            if not forwarded.waiter.done():
                if isinstance(answer, types.JSONRPCResponse):
                    forwarded.waiter.set_result(answer)
                else:
                    error = answer.error
                    not_run = error.code in NOT_RUN
                    forwarded.waiter.set_result(UpstreamError(error.code, error.message, error.data, not_run=not_run))
            return
        assert forwarded.client_id is not None  # requests of the guard's own always have a waiter
        reply: types.JSONRPCMessage
        if isinstance(answer, types.JSONRPCError):
            reply = types.JSONRPCError(jsonrpc="2.0", id=forwarded.client_id, error=answer.error)
        elif forwarded.method == "tools/list":
            reply = await self._filtered_tools(forwarded.client_id, answer.result)
        else:
            reply = types.JSONRPCResponse(jsonrpc="2.0", id=forwarded.client_id, result=answer.result)
        await self._send_client(reply)

    async def _upstream_progress(self, note: types.JSONRPCNotification) -> None:
        params = note.params or {}
        token = params.get("progressToken")
        forwarded = self._forwarded.get(token) if type(token) is int else None
        if forwarded is None or forwarded.progress_token is None:
            logger.debug("dropped an upstream progress notification for no request in flight that asked for it")
            return
        restored = types.JSONRPCNotification(
            jsonrpc="2.0", method=note.method, params={**params, "progressToken": forwarded.progress_token}
        )
        # An HTTP front sends progress on the stream of the request it belongs to.
        await self._send_client(restored, ServerMessageMetadata(related_request_id=forwarded.client_id))

    async def _filtered_tools(
        self, request_id: types.RequestId, result: JSON
    ) -> types.JSONRPCResponse | types.JSONRPCError:
        try:
            filtered = await self._gate.list_tools(self.session, result)
        except Exception:
            logger.exception("gate failed on tools/list")
            return types.JSONRPCError(
                jsonrpc="2.0",
                id=request_id,
                error=types.ErrorData(code=types.INTERNAL_ERROR, message="guard could not evaluate tools/list"),
            )
        return types.JSONRPCResponse(jsonrpc="2.0", id=request_id, result=filtered)

    # what the gate may do besides answering calls (`SessionLink`)

    async def tools_changed(self) -> None:
        note = types.JSONRPCNotification(jsonrpc="2.0", method="notifications/tools/list_changed")
        await self._send_client(note)

    async def call(self, name: str, arguments: JSON) -> JSON:
        params: JSON = {"name": name, "arguments": arguments}
        if self._era_meta is not None:  # a 2026-07-28 upstream wants the protocol version on every request
            params["_meta"] = self._era_meta
        return await self._exchange("tools/call", params, None)

    async def _exchange(self, method: str, params: JSON | None, client_id: types.RequestId | None) -> JSON:
        """Send a request upstream and wait for its result, which the relay keeps for itself.

        Raises:
            UpstreamError: the upstream answered with an error, went away, or did not answer in time."""
        if self._gone is not None:
            raise UpstreamError(UPSTREAM_UNAVAILABLE, self._gone, not_run=True)
        waiter: asyncio.Future[types.JSONRPCResponse | UpstreamError] = asyncio.get_running_loop().create_future()
        request = self._track(method, params, client_id, waiter=waiter)
        try:
            if not await self._to_upstream(request):
                raise UpstreamError(UPSTREAM_UNAVAILABLE, await self._why_gone())
            reply = await waiter
        finally:
            self._untrack(request.id)  # cancelled (the client gave up, the guard is stopping): not waited for
        if isinstance(reply, UpstreamError):
            raise reply
        return reply.result

    async def _why_gone(self) -> str:
        """Why the upstream cannot take a message. A write can fail before the reader has seen the upstream
        exit: wait (bounded) for its exit story rather than answer with a vaguer one."""
        with anyio.move_on_after(UPSTREAM_EXIT_WAIT_S):
            await self._gone_known.wait()
        return self._gone or self._upstream.failure()

    async def _upstream_gone(self) -> None:
        """Answer everything still waiting with why the upstream went away, then end the relay."""
        self._gone = self._upstream.failure()
        self._gone_known.set()
        logger.error("%s", self._gone)
        error = UpstreamError(UPSTREAM_UNAVAILABLE, self._gone)
        for upstream_id in list(self._forwarded):
            if (forwarded := self._untrack(upstream_id)) is not None:
                await self._no_answer(forwarded, error)
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


def _error_data(error: UpstreamError) -> types.ErrorData:
    if error.data is None:  # unset, not null, on the wire
        return types.ErrorData(code=error.code, message=error.message)
    return types.ErrorData(code=error.code, message=error.message, data=error.data)


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
