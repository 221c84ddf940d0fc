"""Serve clients over streamable HTTP (`guard run --listen HOST:PORT`).

Handshake era (up to 2025-11-25): every client session gets its own upstream session (for a stdio
upstream, its own subprocess) and its own `Relay`, so server-to-client requests and notifications
reach the right client. The SDK's `StreamableHTTPServerTransport` speaks the wire.

2026-07-28 era: there is no session on this wire; each POST is one self-contained request. Such
requests share one upstream connection per identity, relayed through a `Relay` like any other; the
request ids and progress tokens of concurrent POSTs are made unique on the way in and restored on
the way out.
"""

from __future__ import annotations

import contextlib
import hmac
import itertools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import mcp_types as types
import uvicorn
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.streamable_http import MCP_SESSION_ID_HEADER, StreamableHTTPServerTransport
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.inbound import ERROR_CODE_HTTP_STATUS, MCP_PROTOCOL_VERSION_HEADER
from mcp.shared.message import SessionMessage
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from guard import _upstream
from guard._errors import UpstreamStartError
from guard._limits import DEFAULT_LIMITS, Limits
from guard._metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from guard._metrics import PrometheusMetrics
from guard._relay import UPSTREAM_UNAVAILABLE, Background, ClientPort, Gate, Relay, Session

logger = logging.getLogger("guard.http")

MCP_PATH = "/mcp"
METRICS_PATH = "/metrics"
SESSION_IDLE_TIMEOUT_S = 30 * 60
MAX_BODY_BYTES = 4 * 1024 * 1024


@dataclass
class _LegacySession:
    transport: StreamableHTTPServerTransport
    identity: str | None


class HttpFront:
    """An ASGI app: bearer-token check, era routing, one relay per client session; `/metrics` when
    given `metrics`."""

    def __init__(
        self,
        spec: _upstream.UpstreamSpec,
        gate: Gate,
        tokens: dict[str, str],
        identity: str | None,
        security: TransportSecuritySettings,
        background: Sequence[Background] = (),
        metrics: PrometheusMetrics | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        self._limits = limits
        self._background = background
        self._metrics = metrics
        self._spec = spec
        self._gate = gate
        self._tokens = tokens
        self._identity = identity
        self._security = security
        self._sessions: dict[str, _LegacySession] = {}
        self._modern: dict[str | None, _ModernChannel] = {}
        self._modern_lock = anyio.Lock()
        self._tg: TaskGroup | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
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
        if self._metrics is not None and scope["path"].rstrip("/") == METRICS_PATH:
            await self._metrics_request(self._metrics, Request(scope, receive), scope, receive, send)
            return
        if scope["path"].rstrip("/") != MCP_PATH:
            await _json_error(404, types.INVALID_REQUEST, f"Not Found: the MCP endpoint is {MCP_PATH}")(
                scope, receive, send
            )
            return
        request = Request(scope, receive)
        identity, refusal = self._authenticate(request)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        version = request.headers.get(MCP_PROTOCOL_VERSION_HEADER)
        if version is not None and version not in HANDSHAKE_PROTOCOL_VERSIONS:
            await self._modern_request(request, identity, scope, receive, send)
        else:
            await self._legacy_request(request, identity, scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        async with self.running():
            await send({"type": "lifespan.startup.complete"})
            message = await receive()
        await send({"type": "lifespan.shutdown.complete"})

    def _authenticate(self, request: Request) -> tuple[str | None, Response | None]:
        """The identity the bearer token names, or a 401; without tokens everyone is `--identity`."""
        if not self._tokens:
            return self._identity, None
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and presented:
            for name, token in self._tokens.items():
                if hmac.compare_digest(presented.strip().encode(), token.encode()):
                    return name, None
            reason = "the bearer token is not valid"
        else:
            reason = "missing `Authorization: Bearer <token>` header"
        logger.warning("refused an HTTP request from %s: %s", request.client.host if request.client else "?", reason)
        response = _json_error(401, types.INVALID_REQUEST, f"Unauthorized: {reason}")
        response.headers["WWW-Authenticate"] = 'Bearer realm="guard"'
        return None, response

    async def _metrics_request(
        self, metrics: PrometheusMetrics, request: Request, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """`GET /metrics`: the same bearer tokens and DNS-rebinding protection as the MCP endpoint."""
        _, refusal = self._authenticate(request)
        if refusal is None:
            refusal = await TransportSecurityMiddleware(self._security).validate_request(request)
        if refusal is None and request.method != "GET":
            refusal = PlainTextResponse(
                f"Method Not Allowed: {METRICS_PATH} answers GET", status_code=405, headers={"Allow": "GET"}
            )
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        # A scrape reads the ledger (holds by state): never on the event loop.
        body = await anyio.to_thread.run_sync(metrics.exposition)
        await Response(body, headers={"content-type": METRICS_CONTENT_TYPE})(scope, receive, send)

    # handshake era: one relay per session

    async def _legacy_request(
        self, request: Request, identity: str | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        session_id = request.headers.get(MCP_SESSION_ID_HEADER)
        if session_id is None:
            await self._open_session(identity, scope, receive, send)
            return
        session = self._sessions.get(session_id)
        # A session answers only the identity that opened it; to anyone else it does not exist.
        if session is None or session.identity != identity:
            await _json_error(404, types.INVALID_REQUEST, "Session not found")(scope, receive, send)
            return
        await session.transport.handle_request(scope, receive, send)

    async def _open_session(self, identity: str | None, scope: Scope, receive: Receive, send: Send) -> None:
        assert self._tg is not None, "HttpFront.running() must be entered first"
        session_id = uuid.uuid4().hex
        transport = StreamableHTTPServerTransport(
            mcp_session_id=session_id,
            is_json_response_enabled=False,
            event_store=None,
            security_settings=self._security,
            idle_timeout=SESSION_IDLE_TIMEOUT_S,
        )
        self._sessions[session_id] = _LegacySession(transport, identity)
        session = Session(id=session_id, identity=identity, transport="http")

        async def serve(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
            try:
                async with transport.connect() as (client_read, client_write):
                    task_status.started()
                    with transport.idle_scope or anyio.CancelScope():
                        await self._relay_session(session, client_read, client_write)
            except Exception:
                # One session's failure must never take the others down.
                logger.exception("session %s crashed", session_id)
            finally:
                self._sessions.pop(session_id, None)
                with anyio.CancelScope(shield=True):
                    await transport.terminate()

        await self._tg.start(serve)
        status = await _answer(transport.handle_request, scope, receive, send)
        if status is None or status >= 400:
            # Only an initialize can open a session; a refused one leaves nothing behind.
            self._sessions.pop(session_id, None)
            await transport.terminate()

    async def _relay_session(self, session: Session, client_read: Any, client_write: Any) -> None:
        try:
            async with _upstream.connect(self._spec) as link:
                logger.info("session %s (identity %s) relaying to %s", session.id, session.identity, self._spec.label)
                failure = await Relay(
                    session, self._gate, ClientPort.of_streams(client_read, client_write), link, self._limits
                ).run()
        except UpstreamStartError as exc:
            failure = str(exc)
            await _refuse_first_request(client_read, client_write, failure)
        if failure is not None:
            logger.error("session %s ended: %s", session.id, failure)

    # 2026-07-28 era: self-contained requests over a shared channel per identity

    async def _modern_request(
        self, request: Request, identity: str | None, scope: Scope, receive: Receive, send: Send
    ) -> None:
        refusal = await TransportSecurityMiddleware(self._security).validate_request(
            request, is_post=request.method == "POST"
        )
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        if request.method != "POST":
            await _json_error(405, types.INVALID_REQUEST, "Method Not Allowed: 2026-07-28 requests are POSTs")(
                scope, receive, send
            )
            return
        body = await request.body()
        try:
            message = types.jsonrpc_message_adapter.validate_json(body, by_name=False)
        except ValueError as exc:
            await _json_error(400, types.PARSE_ERROR, f"Parse error: {exc}")(scope, receive, send)
            return
        if not isinstance(message, types.JSONRPCRequest):
            # The 2026 HTTP wire has no client-to-server notifications; acknowledge and drop, as the SDK does.
            await Response(status_code=202)(scope, receive, send)
            return
        channel = await self._modern_channel(identity)
        await channel.exchange(message, request, scope, receive, send)

    async def _modern_channel(self, identity: str | None) -> _ModernChannel:
        assert self._tg is not None, "HttpFront.running() must be entered first"
        async with self._modern_lock:
            channel = self._modern.get(identity)
            if channel is None or channel.closed:
                session = Session(id=f"{identity or 'anonymous'}/2026", identity=identity, transport="http")
                channel = _ModernChannel(session)
                await self._tg.start(channel.serve, self._spec, self._gate, self._limits)
                self._modern[identity] = channel
            return channel


@dataclass
class _Exchange:
    """One 2026-era POST waiting for its answer."""

    original_id: types.RequestId
    original_token: Any
    queue: MemoryObjectSendStream[types.JSONRPCMessage]


@dataclass
class _ModernChannel:
    """Many self-contained POSTs relayed over one upstream connection."""

    session: Session
    closed: bool = False
    _into_relay: MemoryObjectSendStream[SessionMessage | Exception] | None = None
    _exchanges: dict[str, _Exchange] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=itertools.count)
    _failure: str | None = None

    async def serve(
        self, spec: _upstream.UpstreamSpec, gate: Gate, limits: Limits, *, task_status: TaskStatus[None]
    ) -> None:
        into_relay, client_read = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        client_write, out_of_relay = anyio.create_memory_object_stream[SessionMessage](0)
        self._into_relay = into_relay
        try:
            async with _upstream.connect(spec) as link, anyio.create_task_group() as tg:
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


def _json_error(status: int, code: int, message: str) -> Response:
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}
    return Response(json.dumps(body), status_code=status, media_type="application/json")


async def _answer(app: Any, scope: Scope, receive: Receive, send: Send) -> int | None:
    """Run `app` for one request and return the HTTP status it answered with."""
    status: int | None = None

    async def watch(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    await app(scope, receive, watch)
    return status


async def _refuse_first_request(client_read: Any, client_write: Any, failure: str) -> None:
    """The upstream could not start: answer the session's opening request with why."""
    async for item in client_read:
        if isinstance(item, SessionMessage) and isinstance(item.message, types.JSONRPCRequest):
            error = types.ErrorData(code=UPSTREAM_UNAVAILABLE, message=failure)
            await client_write.send(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=item.message.id, error=error)))
            return


def security_settings(host: str, port: int, tokens: dict[str, str]) -> TransportSecuritySettings:
    """DNS-rebinding protection for loopback; a bearer token protects any other address."""
    if tokens and host not in ("127.0.0.1", "localhost", "::1"):
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts = [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "127.0.0.1", "localhost"]
    origins = [f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"]
    return TransportSecuritySettings(allowed_hosts=hosts, allowed_origins=origins)


def serve_http(
    spec: _upstream.UpstreamSpec,
    gate: Gate,
    host: str,
    port: int,
    tokens: dict[str, str],
    identity: str | None,
    background: Sequence[Background] = (),
    metrics: PrometheusMetrics | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """Serve until interrupted; with `metrics`, also Prometheus metrics at `/metrics`."""
    front = HttpFront(spec, gate, tokens, identity, security_settings(host, port, tokens), background, metrics, limits)
    logger.info("serving MCP over streamable HTTP at http://%s:%d%s, upstream %s", host, port, MCP_PATH, spec.label)
    if metrics is not None:
        logger.info("serving Prometheus metrics at http://%s:%d%s", host, port, METRICS_PATH)
    config = uvicorn.Config(front, host=host, port=port, log_config=None, lifespan="on", timeout_graceful_shutdown=5)
    uvicorn.Server(config).run()
