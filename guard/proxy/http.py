"""Serve clients over streamable HTTP (`guard run --listen HOST:PORT`).

Every request to the MCP endpoint is checked in full before anything acts on it: bearer token, Host/Origin,
method, content type, body size (read once, bounded) and the message itself (`guard.proxy.wire`); only then does it
reach a session, and only a valid `initialize` within `--max-sessions` opens one. A refused request starts no
upstream process.

Handshake era (up to 2025-11-25): every client session gets its own upstream session (for a stdio
upstream, its own subprocess) and its own `Relay`, so server-to-client requests and notifications
reach the right client. The SDK's `StreamableHTTPServerTransport` speaks the wire, fed the body the front
has already read and checked.

2026-07-28 era: there is no session on this wire; each POST is one self-contained request. Such
requests share one upstream connection per identity, relayed through a `Relay` like any other; the
request ids and progress tokens of concurrent POSTs are made unique on the way in and restored on
the way out. That channel is the identity's session: it ends after `--session-idle` without requests,
and the next request opens a new one, with a new id (a per-session budget starts afresh, as in the
handshake era).

Below the app, `serve_http` runs uvicorn with `_Connection` (a request must arrive whole within
`--read-timeout`; connections past `--max-connections` are refused at once) and `LogFloodFilter` (a flood of
bad connections costs a few log lines a minute).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import anyio
import h11
import mcp_types as types
import uvicorn
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.streamable_http import (
    MCP_SESSION_ID_HEADER,
    StreamableHTTPServerTransport,
    check_accept_headers,
)
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.inbound import ERROR_CODE_HTTP_STATUS, MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.message import SessionMessage
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from guard.core import Background, Gate, Scrape, Session, off_loop
from guard.errors import MessageRefused, UpstreamStartError
from guard.proxy import upstream
from guard.proxy.limits import DEFAULT_LIMITS, Limits
from guard.proxy.relay import UPSTREAM_UNAVAILABLE, ClientPort, Relay
from guard.proxy.sharing import HANDSHAKE_ERA, MODERN_ERA, Sharing, Upstreams
from guard.proxy.wire import read_client_message

logger = logging.getLogger("guard.http")

MCP_PATH = "/mcp"
METRICS_PATH = "/metrics"
# What a client refused for lack of room (sessions, connections) is told to wait before trying again.
RETRY_AFTER_S = 10
# How long a request waits for the transport to close the stream of an answered request with the same id.
ANSWERED_CLOSE_S = 5.0


class _Refused(Exception):
    """A request the front answers itself, with `response`, before anything acts on it."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status_code)
        self.response = response


def _refusal(
    status: int,
    code: int,
    message: str,
    request_id: types.RequestId | None = None,
    headers: Mapping[str, str] | None = None,
) -> _Refused:
    body = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return _Refused(Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers))


@dataclass
class _LegacySession:
    """A handshake-era client session: its transport, who opened it, and its requests in flight."""

    id: str
    transport: StreamableHTTPServerTransport
    identity: str | None
    # The SDK transport keeps one answer stream per request id (as `str(id)`): a second request with an id
    # still in flight would take the first one's stream (the first one hangs) and its answer. An id is in
    # flight while its POST is handled and while the relay owes it an answer.
    posting: dict[str, anyio.Event] = field(default_factory=dict)  # set when that POST's handling ends
    owed: set[str] = field(default_factory=set)

    async def post(self, message: types.JSONRPCMessage, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand one checked message to the transport, as the body of this POST.

        Raises:
            _Refused: 400, a request whose id is in flight in this session."""
        request_id = message.id if isinstance(message, types.JSONRPCRequest) else None
        key = None if request_id is None else str(request_id)
        if key is not None:
            if (handled := self.posting.get(key)) is not None and key not in self.owed:
                # Its answer may already be on its way (a client may send its next request as soon as it reads
                # it) while the transport closes that request's stream: wait for that, bounded.
                with anyio.move_on_after(ANSWERED_CLOSE_S):
                    await handled.wait()
            if key in self.posting or key in self.owed:
                raise _refusal(
                    400,
                    types.INVALID_REQUEST,
                    f"Invalid request: id {key} is already in flight in this session",
                    request_id,
                )
            self.posting[key] = anyio.Event()
        # The transport parses what the front checked, not the client's bytes: no difference between two JSON
        # parsers can turn a checked request into something else.
        body = message.model_dump_json(by_alias=True, exclude_unset=True).encode()
        try:
            await self.transport.handle_request(scope, _replaying(body, receive), send)
        finally:
            if key is not None:
                self.posting.pop(key).set()

    def client_port(self, read: Any, write: Any) -> ClientPort:
        """The relay's side of the transport, noting which requests the relay took and answered."""

        async def messages() -> AsyncIterator[SessionMessage | Exception]:
            async for item in read:
                if isinstance(item, SessionMessage):
                    message = item.message
                    if isinstance(message, types.JSONRPCRequest):
                        self.owed.add(str(message.id))
                    elif isinstance(message, types.JSONRPCNotification) and message.method == "notifications/cancelled":
                        # A cancelled request gets no answer.
                        self.owed.discard(str((message.params or {}).get("requestId")))
                yield item

        async def send(item: SessionMessage) -> None:
            message = item.message
            if isinstance(message, types.JSONRPCResponse | types.JSONRPCError) and message.id is not None:
                self.owed.discard(str(message.id))
            await write.send(item)

        return ClientPort(messages(), send, write.aclose)


class HttpFront:
    """An ASGI app: every check first, then era routing, one relay per client session; `/metrics` when
    given `metrics`."""

    def __init__(
        self,
        spec: upstream.UpstreamSpec,
        gate: Gate,
        tokens: dict[str, str],
        identity: str | None,
        security: TransportSecuritySettings,
        background: Sequence[Background] = (),
        metrics: Scrape | None = None,
        limits: Limits = DEFAULT_LIMITS,
        sharing: Sharing | None = None,
        json_answers: bool = False,
    ) -> None:
        self._limits = limits
        # Where each session's upstream comes from (`--upstream-sessions`, `--warm`); a shared upstream closes
        # `--session-idle` after its last client left.
        # `--http-answers json`: a request's answer as one JSON body (no SSE stream), as pure forwarders do.
        self._json_answers = json_answers
        self.upstreams = Upstreams(spec, sharing or Sharing(), limits.session_idle_s)
        self._background = background
        self._metrics = metrics
        self._spec = spec
        self._gate = gate
        self._tokens = tokens
        self._identity = identity
        self._security = TransportSecurityMiddleware(security)
        self._security_settings = security
        self._sessions: dict[str, _LegacySession] = {}
        self._modern: dict[str | None, _ModernChannel] = {}
        self._modern_lock = anyio.Lock()
        self._tg: TaskGroup | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        # Sessions end before the upstreams they use.
        async with self.upstreams.running(), anyio.create_task_group() as tg:
            self._tg = tg
            for task in self._background:
                tg.start_soon(task)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                self._tg = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        try:
            if self._metrics is not None and scope["path"].rstrip("/") == METRICS_PATH:
                await self._metrics_request(self._metrics, request, scope, receive, send)
            elif scope["path"].rstrip("/") != MCP_PATH:
                raise _refusal(404, types.INVALID_REQUEST, f"Not Found: the MCP endpoint is {MCP_PATH}")
            else:
                await self._mcp_request(request, scope, receive, send)
        except _Refused as refused:
            response = refused.response
            client = request.client.host if request.client else "?"
            logger.warning(
                "refused %s %s from %s: %d %s",
                request.method,
                scope["path"],
                client,
                response.status_code,
                _reason(response),
            )
            # Its body may be unread, and a client sending what gets refused need not be kept.
            response.headers["connection"] = "close"
            await response(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        async with self.running():
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
        await send({"type": "lifespan.shutdown.complete"})

    def _authenticate(self, request: Request) -> str | None:
        """The identity the bearer token names; without tokens everyone is `--identity`.

        Raises:
            _Refused: 401, no token or not a valid one."""
        if not self._tokens:
            return self._identity
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and presented:
            for name, token in self._tokens.items():
                if hmac.compare_digest(presented.strip().encode(), token.encode()):
                    return name
            reason = "the bearer token is not valid"
        else:
            reason = "missing `Authorization: Bearer <token>` header"
        raise _refusal(
            401, types.INVALID_REQUEST, f"Unauthorized: {reason}", headers={"WWW-Authenticate": 'Bearer realm="guard"'}
        )

    async def _check_origin(self, request: Request) -> None:
        """DNS-rebinding protection: the SDK's Host/Origin checks.

        Raises:
            _Refused: 421 (Host) or 403 (Origin)."""
        refusal = await self._security.validate_request(request)
        if refusal is not None:
            raise _Refused(refusal)

    async def _metrics_request(
        self, metrics: Scrape, request: Request, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """`GET /metrics`: the same bearer tokens and DNS-rebinding protection as the MCP endpoint."""
        self._authenticate(request)
        await self._check_origin(request)
        if request.method != "GET":
            raise _Refused(
                PlainTextResponse(
                    f"Method Not Allowed: {METRICS_PATH} answers GET", status_code=405, headers={"Allow": "GET"}
                )
            )
        # A scrape reads the ledger (holds by state): never on the event loop.
        body = await off_loop(metrics.exposition)
        await Response(body, headers={"content-type": metrics.content_type})(scope, receive, send)

    async def _mcp_request(self, request: Request, scope: Scope, receive: Receive, send: Send) -> None:
        """Every check, in order, before a session or an upstream is touched; then the request's session."""
        identity = self._authenticate(request)
        await self._check_origin(request)
        version = request.headers.get(MCP_PROTOCOL_VERSION_HEADER)
        modern = version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS
        session_id = None if modern else request.headers.get(MCP_SESSION_ID_HEADER)
        _check_method(request.method, modern, session_id)
        if request.method != "POST":  # GET (the server's stream) or DELETE, within a session
            await self._session(session_id, identity).transport.handle_request(scope, receive, send)
            return
        _check_content_type(request)
        if not modern:
            _check_accept(request, self._json_answers)
        message = await self._read_message(request, receive)
        if modern:
            if not isinstance(message, types.JSONRPCRequest):
                # The 2026 HTTP wire has no client-to-server notifications; acknowledge and drop, as the SDK does.
                await Response(status_code=202)(scope, receive, send)
                return
            channel = await self._modern_channel(identity)
            await channel.exchange(message, request, scope, receive, send)
        elif session_id is None:
            await self._open_session(identity, message, scope, receive, send)
        else:
            await self._session(session_id, identity).post(message, scope, receive, send)

    async def _read_message(self, request: Request, receive: Receive) -> types.JSONRPCMessage:
        """The body, read once and never past `--max-message-size`, as one checked JSON-RPC message.

        Raises:
            _Refused: 413 too large (said by Content-Length, or seen while reading), 400 not a usable
                message (`read_client_message`), or the client hung up mid-body."""
        limit = self._limits.max_message_bytes
        too_large = _refusal(
            413, types.INVALID_REQUEST, f"Payload Too Large: the limit is {limit} bytes (--max-message-size)"
        )
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        while True:
            chunk = await receive()
            if chunk["type"] != "http.request":
                raise _refusal(400, types.INVALID_REQUEST, "Bad Request: the client hung up before its body ended")
            body += chunk.get("body", b"")
            if len(body) > limit:
                raise too_large
            if not chunk.get("more_body", False):
                break
        try:
            return read_client_message(bytes(body), limit).message
        except MessageRefused as exc:
            raise _refusal(400, exc.code, exc.message, exc.request_id) from None

    def _check_room(self) -> None:
        """Each session may hold an upstream process: past `--max-sessions`, a new one must wait.

        Raises:
            _Refused: 503 with Retry-After."""
        open_sessions = len(self._sessions) + sum(1 for channel in self._modern.values() if channel.open)
        if open_sessions >= self._limits.max_sessions:
            raise _refusal(
                503,
                UPSTREAM_UNAVAILABLE,
                f"Service Unavailable: {open_sessions} sessions are open, the most allowed (--max-sessions)",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )

    # handshake era: one relay per session

    def _session(self, session_id: str | None, identity: str | None) -> _LegacySession:
        """The open session `session_id`, if `identity` opened it: to anyone else it does not exist.

        Raises:
            _Refused: 404."""
        session = self._sessions.get(session_id or "")
        if session is None or session.identity != identity:
            raise _refusal(404, types.INVALID_REQUEST, "Session not found")
        return session

    async def _open_session(
        self, identity: str | None, message: types.JSONRPCMessage, scope: Scope, receive: Receive, send: Send
    ) -> None:
        assert self._tg is not None, "HttpFront.running() must be entered first"
        if not (isinstance(message, types.JSONRPCRequest) and message.method == "initialize"):
            raise _refusal(
                400,
                types.INVALID_REQUEST,
                "Bad Request: no Mcp-Session-Id; a session starts with an initialize request",
            )
        try:
            types.InitializeRequestParams.model_validate(message.params, by_name=False)
        except ValidationError as exc:
            where = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                for e in exc.errors(include_input=False, include_url=False)
            )
            raise _refusal(400, types.INVALID_PARAMS, f"Invalid initialize params: {where}", message.id) from None
        self._check_room()
        session_id = uuid.uuid4().hex
        idle_s = self._limits.session_idle_s
        transport = StreamableHTTPServerTransport(
            mcp_session_id=session_id,
            is_json_response_enabled=self._json_answers,
            event_store=None,
            security_settings=self._security_settings,
            idle_timeout=idle_s,
        )
        session = self._sessions[session_id] = _LegacySession(session_id, transport, identity)

        async def serve(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            idle = anyio.CancelScope()
            try:
                async with transport.connect() as (client_read, client_write):
                    idle = transport.idle_scope or idle
                    task_status.started()
                    with idle:
                        await self._relay_session(
                            session, session.client_port(client_read, client_write), message.params
                        )
            except Exception:
                # One session's failure must never take the others down.
                logger.exception("session %s crashed", session_id)
            finally:
                self._sessions.pop(session_id, None)
                with anyio.CancelScope(shield=True):
                    await transport.terminate()
                logger.info("session %s closed%s", session_id, _idled(idle, idle_s))

        await self._tg.start(serve)
        await session.post(message, scope, receive, send)

    async def _relay_session(
        self, session: _LegacySession, client: ClientPort, initialize: dict[str, Any] | None
    ) -> None:
        relayed = Session(id=session.id, identity=session.identity, transport="http")
        try:
            async with self.upstreams.link(session.identity, HANDSHAKE_ERA, initialize) as link:
                logger.info("session %s (identity %s) relaying to %s", session.id, session.identity, self._spec.label)
                failure = await Relay(relayed, self._gate, client, link, self._limits).run()
        except UpstreamStartError as exc:
            failure = str(exc)
            await _refuse_first_request(client, failure)
        if failure is not None:
            logger.error("session %s ended: %s", session.id, failure)

    # 2026-07-28 era: self-contained requests over a channel per identity

    async def _modern_channel(self, identity: str | None) -> _ModernChannel:
        assert self._tg is not None, "HttpFront.running() must be entered first"
        async with self._modern_lock:
            channel = self._modern.get(identity)
            if channel is None or not channel.open:
                self._check_room()
                session_id = f"{identity or 'anonymous'}/2026/{uuid.uuid4().hex[:12]}"
                channel = _ModernChannel(Session(id=session_id, identity=identity, transport="http"))
                await self._tg.start(channel.serve, self.upstreams, self._gate, self._limits)
                self._modern[identity] = channel
            return channel


def _check_method(method: str, modern: bool, session_id: str | None) -> None:
    """POST carries messages; GET (the server's stream) and DELETE need a handshake-era session.

    Raises:
        _Refused: 405 (a CORS preflight is an OPTIONS: refused without CORS headers, so a browser sends
            nothing further), or 400 for a GET or DELETE without a session."""
    allowed = ("POST",) if modern else ("GET", "POST", "DELETE")
    if method not in allowed:
        raise _refusal(
            405,
            types.INVALID_REQUEST,
            f"Method Not Allowed: the MCP endpoint answers {', '.join(allowed)}"
            + (" to 2026-07-28 requests" if modern else ""),
            headers={"Allow": ", ".join(allowed)},
        )
    if method != "POST" and session_id is None:
        raise _refusal(
            400, types.INVALID_REQUEST, f"Bad Request: a {method} needs the Mcp-Session-Id of an open session"
        )


def _check_content_type(request: Request) -> None:
    """The body is JSON: a media type of exactly `application/json` (stricter than both of the SDK's checks).

    Raises:
        _Refused: 415."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip()
    if media_type != "application/json":
        raise _refusal(415, types.INVALID_REQUEST, "Unsupported Media Type: Content-Type must be application/json")


def _check_accept(request: Request, json_answers: bool) -> None:
    """A handshake-era POST may be answered in JSON or SSE: the client must accept both (as the SDK requires);
    with `--http-answers json` only JSON.

    Raises:
        _Refused: 406."""
    has_json, has_sse = check_accept_headers(request)
    if json_answers and not has_json:
        raise _refusal(406, types.INVALID_REQUEST, "Not Acceptable: Client must accept application/json")
    if not json_answers and not (has_json and has_sse):
        raise _refusal(
            406,
            types.INVALID_REQUEST,
            "Not Acceptable: Client must accept both application/json and text/event-stream",
        )


def _idled(scope: anyio.CancelScope, idle_s: float) -> str:
    """Why a session closed, for the log, when it was for idleness."""
    return f" after {idle_s:g}s without a request (--session-idle)" if scope.cancelled_caught else ""


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the already-read body, then whatever the connection says next (a disconnect)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def _reason(response: Response) -> str:
    """A refusal's reason, for the log: its JSON-RPC error message, or its text (never anything the client sent)."""
    body = bytes(response.body)
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")


@dataclass
class _Exchange:
    """One 2026-era POST waiting for its answer."""

    original_id: types.RequestId
    original_token: Any
    queue: MemoryObjectSendStream[types.JSONRPCMessage]


@dataclass
class _ModernChannel:
    """Many self-contained POSTs relayed over one upstream connection: one identity's session, closed once no
    request has been in flight for `--session-idle`."""

    session: Session
    closed: bool = False
    _into_relay: MemoryObjectSendStream[SessionMessage | Exception] | None = None
    _exchanges: dict[str, _Exchange] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _failure: str | None = None
    _idle: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    _idle_s: float = math.inf
    _busy: int = 0

    @property
    def open(self) -> bool:
        """Taking requests: not closed, nor closing for idleness."""
        return not self.closed and not self._idle.cancel_called

    async def serve(self, upstreams: Upstreams, gate: Gate, limits: Limits, *, task_status: TaskStatus[None]) -> None:
        into_relay, client_read = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        client_write, out_of_relay = anyio.create_memory_object_stream[SessionMessage](0)
        self._into_relay = into_relay
        self._idle_s = limits.session_idle_s
        self._idle.deadline = anyio.current_time() + self._idle_s
        try:
            with self._idle:
                async with (
                    upstreams.link(self.session.identity, MODERN_ERA) as link,
                    anyio.create_task_group() as tg,
                ):
                    logger.info(
                        "session %s (identity %s) relaying to %s", self.session.id, self.session.identity, link.label
                    )
                    tg.start_soon(self._deliver, out_of_relay)
                    task_status.started()
                    self._failure = await Relay(
                        self.session, gate, ClientPort.of_streams(client_read, client_write), link, limits
                    ).run()
                    tg.cancel_scope.cancel()
        except UpstreamStartError as exc:
            self._failure = str(exc)
            task_status.started()
        finally:
            self.closed = True
            logger.info("session %s closed%s", self.session.id, _idled(self._idle, self._idle_s))
            for exchange in self._exchanges.values():
                error = types.ErrorData(code=UPSTREAM_UNAVAILABLE, message=self._failure or "upstream closed")
                with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.WouldBlock):
                    exchange.queue.send_nowait(types.JSONRPCError(jsonrpc="2.0", id=exchange.original_id, error=error))

    async def _deliver(self, out_of_relay: MemoryObjectReceiveStream[SessionMessage]) -> None:
        """Route what the relay sends back to the POST it belongs to."""
        async for item in out_of_relay:
            message = item.message
            key: str | None = None
            if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
                key = message.id if isinstance(message.id, str) else None
            elif isinstance(message, types.JSONRPCNotification) and message.method == "notifications/progress":
                token = (message.params or {}).get("progressToken")
                key = token if isinstance(token, str) else None
            exchange = self._exchanges.get(key) if key is not None else None
            if exchange is None:
                logger.debug("dropped a 2026-era %s with no request to carry it", type(message).__name__)
                continue
            with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                await exchange.queue.send(_restore(message, exchange))

    async def exchange(
        self,
        request_message: types.JSONRPCRequest,
        request: Request,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        if self._into_relay is None or self.closed:
            error = types.ErrorData(code=UPSTREAM_UNAVAILABLE, message=self._failure or "upstream unavailable")
            await _reply(types.JSONRPCError(jsonrpc="2.0", id=request_message.id, error=error), scope, receive, send)
            return
        # A request in flight holds the session open; the idle countdown starts when the last one ends.
        self._busy += 1
        self._idle.deadline = math.inf
        try:
            await self._relay_exchange(request_message, request, scope, receive, send)
        finally:
            self._busy -= 1
            if not self._busy:
                self._idle.deadline = anyio.current_time() + self._idle_s

    async def _relay_exchange(
        self,
        request_message: types.JSONRPCRequest,
        request: Request,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        assert self._into_relay is not None
        key = f"guard-{next(self._ids)}"
        params = dict(request_message.params or {})
        meta = dict(params.get("_meta") or {})
        original_token = meta.get("progressToken")
        if original_token is not None:
            meta["progressToken"] = key
            params["_meta"] = meta
        queue, answers = anyio.create_memory_object_stream[types.JSONRPCMessage](16)
        self._exchanges[key] = _Exchange(request_message.id, original_token, queue)
        inner = types.JSONRPCRequest(jsonrpc="2.0", id=key, method=request_message.method, params=params)
        try:
            await self._into_relay.send(SessionMessage(inner))
            await _stream_answer(answers, request, scope, receive, send, self._cancel(key))
        finally:
            self._exchanges.pop(key, None)

    def _cancel(self, key: str) -> Any:
        async def cancel() -> None:
            note = types.JSONRPCNotification(
                jsonrpc="2.0",
                method="notifications/cancelled",
                params={"requestId": key, "reason": "client disconnected"},
            )
            if self._into_relay is not None:
                with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                    await self._into_relay.send(SessionMessage(note))

        return cancel


def _restore(message: types.JSONRPCMessage, exchange: _Exchange) -> types.JSONRPCMessage:
    if isinstance(message, types.JSONRPCResponse):
        return types.JSONRPCResponse(jsonrpc="2.0", id=exchange.original_id, result=message.result)
    if isinstance(message, types.JSONRPCError):
        return types.JSONRPCError(jsonrpc="2.0", id=exchange.original_id, error=message.error)
    assert isinstance(message, types.JSONRPCNotification)
    params = dict(message.params or {})
    params["progressToken"] = exchange.original_token
    return types.JSONRPCNotification(jsonrpc="2.0", method=message.method, params=params)


async def _stream_answer(
    answers: MemoryObjectReceiveStream[types.JSONRPCMessage],
    request: Request,
    scope: Scope,
    receive: Receive,
    send: Send,
    cancel: Any,
) -> None:
    """Answer one 2026-era POST: JSON if the response comes first, SSE once a notification does.

    A client that disconnects before the answer cancels the request upstream.
    """
    accepts_sse = "text/event-stream" in request.headers.get("accept", "")
    answered = False

    async def watch_disconnect(tg: TaskGroup) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        if not answered:
            await cancel()
        tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch_disconnect, tg)
        streaming = False
        async for message in answers:
            final = isinstance(message, types.JSONRPCResponse | types.JSONRPCError)
            if final and not streaming:
                answered = True
                await _reply(message, scope, receive, send)
                break
            if not accepts_sse:
                continue  # a JSON-only client cannot carry notifications
            if not streaming:
                streaming = True
                await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
            answered = final
            await send({"type": "http.response.body", "body": _sse(message), "more_body": not final})
            if final:
                break
        tg.cancel_scope.cancel()


_SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]


def _sse(message: types.JSONRPCMessage) -> bytes:
    data = message.model_dump_json(by_alias=True, exclude_unset=True)
    return f"event: message\r\ndata: {data}\r\n\r\n".encode()


async def _reply(message: types.JSONRPCMessage, scope: Scope, receive: Receive, send: Send) -> None:
    status = ERROR_CODE_HTTP_STATUS.get(message.error.code, 200) if isinstance(message, types.JSONRPCError) else 200
    body = message.model_dump_json(by_alias=True, exclude_unset=True)
    await Response(body, status_code=status, media_type="application/json")(scope, receive, send)


async def _refuse_first_request(client: ClientPort, failure: str) -> None:
    """The upstream could not start: answer the session's opening request with why."""
    async for item in client.messages:
        if isinstance(item, SessionMessage) and isinstance(item.message, types.JSONRPCRequest):
            error = types.ErrorData(code=UPSTREAM_UNAVAILABLE, message=failure)
            await client.send(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=item.message.id, error=error)))
            return


def security_settings(host: str, port: int, tokens: dict[str, str]) -> TransportSecuritySettings:
    """DNS-rebinding protection for loopback; a bearer token protects any other address."""
    if tokens and host not in ("127.0.0.1", "localhost", "::1"):
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts = [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1", "localhost"]
    origins = [f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"]
    return TransportSecuritySettings(allowed_hosts=hosts, allowed_origins=origins)


# below the app: connections and logs


class _Connection(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with the two bounds it lacks (it has no header timeout, and its
    `limit_concurrency` answers only once a request's headers have arrived, holding the socket until then):

    - a request must arrive whole (headers and body) within `--read-timeout` of when the server starts waiting
      for it (the connection opening, or the previous response ending), or the connection is closed;
    - a connection past `--max-connections` is answered 503 and closed as soon as it opens.
    """

    limits: ClassVar[Limits] = DEFAULT_LIMITS
    _read_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            logger.warning(
                "refused a connection from %s: %d are open, the most allowed (--max-connections)",
                _peer(self.client),
                self.limits.max_connections,
            )
            transport.write(_BUSY)
            transport.close()
            return
        self._watch_reading()

    def handle_events(self) -> None:
        super().handle_events()
        self._watch_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_watching()
        super().connection_lost(exc)

    def _watch_reading(self) -> None:
        """Run the read timer while the client owes a request (h11: IDLE or SEND_BODY), and only then."""
        waiting = self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing()
        if not waiting:
            self._stop_watching()
        elif self._read_deadline is None:
            self._read_deadline = self.loop.call_later(self.limits.read_timeout_s, self._read_timed_out)

    def _stop_watching(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if not self.transport.is_closing():
            logger.warning(
                "closed a connection from %s: no whole request within %gs (--read-timeout)",
                _peer(self.client),
                self.limits.read_timeout_s,
            )
            self.transport.close()


def _busy() -> bytes:
    body = b"Service Unavailable: too many connections (--max-connections)"
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nretry-after: {RETRY_AFTER_S}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


_BUSY = _busy()


def _peer(client: tuple[str, int] | None) -> str:
    return client[0] if client else "?"


@dataclass
class _Site:
    """How much one logging call site said in the current period."""

    since: float
    passed: int = 0
    held: int = 0


class LogFloodFilter(logging.Filter):
    """At most `burst` warnings (or worse) per logging call site per `period_s`; the next one let through says
    how many were held back. Call sites, not messages: a flood of bad connections or requests repeats one call
    site (uvicorn's "Invalid HTTP request", a refusal, a read timeout) however its messages vary. Info and
    debug records pass untouched."""

    def __init__(self, burst: int = 10, period_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.period_s = period_s
        self._clock = clock
        self._sites: dict[tuple[str, int], _Site] = {}
        self._lock = threading.Lock()  # ledger work logs from worker threads

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = self._clock()
        with self._lock:
            site = self._sites.get((record.pathname, record.lineno))
            if site is None or now - site.since >= self.period_s:
                held = site.held if site is not None else 0
                self._sites[(record.pathname, record.lineno)] = _Site(now, passed=1)
                if held:
                    record.msg = f"{record.getMessage()} ({held} earlier ones like this were not logged)"
                    record.args = None
                return True
            if site.passed < self.burst:
                site.passed += 1
                return True
            site.held += 1
            return False


def serve_http(
    spec: upstream.UpstreamSpec,
    gate: Gate,
    host: str,
    port: int,
    tokens: dict[str, str],
    identity: str | None,
    background: Sequence[Background] = (),
    metrics: Scrape | None = None,
    limits: Limits = DEFAULT_LIMITS,
    sharing: Sharing | None = None,
    json_answers: bool = False,
) -> None:
    """Serve until interrupted; with `metrics`, also Prometheus metrics at `/metrics`."""
    security = security_settings(host, port, tokens)
    front = HttpFront(spec, gate, tokens, identity, security, background, metrics, limits, sharing, json_answers)
    flood_filter = LogFloodFilter()
    for handler in logging.getLogger().handlers:
        handler.addFilter(flood_filter)
    logger.info("serving MCP over streamable HTTP at http://%s:%d%s, upstream %s", host, port, MCP_PATH, spec.label)
    if metrics is not None:
        logger.info("serving Prometheus metrics at http://%s:%d%s", host, port, METRICS_PATH)
    connection = type("Connection", (_Connection,), {"limits": limits})
    config = uvicorn.Config(
        front, host=host, port=port, log_config=None, lifespan="on", timeout_graceful_shutdown=5, http=connection
    )
    uvicorn.Server(config).run()
