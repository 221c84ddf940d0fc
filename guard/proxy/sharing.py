"""Upstream sharing (`--upstream-sessions`): one real upstream connection carrying many relays.

Each relay already sends upstream under ids and progress tokens of its own (a counter per relay): two relays
on one upstream would collide. A `SharedUpstream` gives each relay a virtual `UpstreamLink` and renames once
more, from one counter for the whole upstream:

- a relay's request goes up under a fresh id (its progress token, if any, under that id too); the answer and
  the progress come back to that relay alone, under its own id and token; an answer to an id no relay is
  waiting for (never sent, already answered, cancelled) is dropped;
- a relay's `notifications/cancelled` names the renamed id (one it has no request in flight for is dropped);
- a request of the upstream's to a client (sampling, elicitation, roots) goes to the one client it can be for:
  the only client on the upstream, else the only one with requests in flight upstream. When several (or none)
  have, which one it is for cannot be told: it is refused to the upstream with an error, never guessed. Its
  id is renamed too, and the client's answer mapped back; a second request under an id still awaiting its
  answer is dropped. A `ping` is answered by guard itself;
- every other notification of the upstream's (list changed, resource updated, log messages) goes to every
  client of that upstream.

Handshake era: the upstream is initialised once, by the first client's `initialize` (or by the warm pool,
`guard.proxy.warm`); every later client's is answered from that InitializeResult under its own id, with the
protocol version the upstream was initialised with (the spec's answer to a version a server does not speak:
the client then decides whether to go on); its `notifications/initialized` is not sent again. An SDK server
decides a connection's era by its first request, so upstreams are shared per era.

guard's own `Session` (id, identity, budgets, audit) stays one per client session: sharing changes only what
is below the relay. When the upstream dies, every relay on it reads the end of its messages and the failure.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import mcp_types as types
from anyio.abc import TaskGroup, TaskStatus
from mcp.shared.message import SessionMessage

from guard.errors import ConfigError, UpstreamStartError
from guard.proxy import upstream
from guard.proxy.upstream import UpstreamLink, UpstreamSpec, describe
from guard.text import short

if TYPE_CHECKING:
    from guard.proxy.warm import WarmPool

logger = logging.getLogger("guard.sharing")

Connect = Callable[[], AbstractAsyncContextManager[UpstreamLink]]

PER_SESSION = "per-session"
PER_IDENTITY = "per-identity"
SHARED = "shared"
MODES = (PER_SESSION, PER_IDENTITY, SHARED)
# The shipped presets' servers (402-mcp, P402, Alby, Token Pilot) keep their state in files and the wallet, not
# per connection, and several 402-mcp processes on one state directory may race on its files: one process.
DEFAULT_MODE = SHARED

HANDSHAKE_ERA = "handshake"
MODERN_ERA = "2026-07-28"

# Messages waiting for one client of a shared upstream: past it, that client is cut off (its link ends) rather
# than let one client that stopped reading stall the upstream's reader, and so every other client on it.
CLIENT_BUFFER = 256
# How long a warm upstream may take to answer guard's own `initialize`.
INITIALIZE_S = 30.0
# The error a request of the upstream's gets when which client it is for cannot be told.
AMBIGUOUS = types.INVALID_REQUEST


@dataclass(frozen=True)
class Sharing:
    """How HTTP client sessions get their upstream: `mode` (`--upstream-sessions`) and, for per-session
    upstreams, how many are kept started and initialised (`--warm`)."""

    mode: str = DEFAULT_MODE
    warm: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--upstream-sessions {self.mode!r}: expected one of {', '.join(MODES)}")
        if self.warm < 0:
            raise ConfigError(f"--warm {self.warm}: expected a whole number of at least 0")


@dataclass(eq=False)
class _Sent:
    """A request a client's relay sent up, until answered or cancelled."""

    client: _Client
    client_id: types.RequestId
    token: types.ProgressToken | None  # the relay's progress token, put back on the upstream's progress
    initialize: bool = False


@dataclass(eq=False)
class _Asked:
    """A request of the upstream's delivered to one client, until that client answers it."""

    client: _Client
    upstream_id: types.RequestId


class _Client:
    """One relay's view of a shared upstream: a virtual `UpstreamLink`."""

    def __init__(self, shared: SharedUpstream, wants_routing_headers: bool) -> None:
        self._shared = shared
        self._inbox, self._outbox = anyio.create_memory_object_stream[SessionMessage | Exception](CLIENT_BUFFER)
        self.in_flight: dict[types.RequestId, int] = {}  # the relay's id -> the shared id
        self.link = UpstreamLink(shared.label, self._messages(), self._send, wants_routing_headers)

    async def _messages(self) -> AsyncIterator[SessionMessage | Exception]:
        with self._outbox, suppress(anyio.ClosedResourceError, anyio.EndOfStream):
            async for item in self._outbox:
                yield item

    async def _send(self, item: SessionMessage) -> None:
        await self._shared._from_client(self, item)

    async def deliver(self, message: types.JSONRPCMessage) -> None:
        try:
            self._inbox.send_nowait(SessionMessage(message))
        except anyio.WouldBlock:
            # Its relay has not read CLIENT_BUFFER messages: cut off. Its calls in flight end with this failure
            # (a paying one's hold stays in doubt, still counted), the other clients go on.
            logger.warning("a client of %s left %d messages unread: cut off", self._shared.label, CLIENT_BUFFER)
            self.end(f"upstream {self._shared.label}: this client left {CLIENT_BUFFER} messages unread (too slow)")
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def end(self, failure: str | None) -> None:
        """No more messages: the upstream went away (`failure`)."""
        if failure is not None:
            self.link._failure = failure
        self._inbox.close()

    def leave(self) -> None:
        """The client left: nothing more is kept for it."""
        self._inbox.close()
        self._outbox.close()


class SharedUpstream:
    """One upstream connection and the relays on it. It lives while it has clients, then `linger_s` longer
    (a new client in that time keeps it); it is never closed before its first client left."""

    def __init__(self, label: str, linger_s: float) -> None:
        self.label = label
        self._linger_s = linger_s
        self._ids = itertools.count(1)
        self._sent: dict[int, _Sent] = {}  # by the shared id
        self._tokens: dict[int, _Sent] = {}  # by the shared progress token
        self._asked: dict[int, _Asked] = {}  # by the id the client saw
        self._asked_ids: set[types.RequestId] = set()  # the upstream's ids of requests awaiting a client's answer
        self.clients: set[_Client] = set()
        self._link: UpstreamLink | None = None
        self._scope = anyio.CancelScope()
        self._tg: TaskGroup | None = None
        self.start_failure: str | None = None
        self.closed = False
        self.done = anyio.Event()  # set once it closed and its clients were told
        # The handshake: the upstream's InitializeResult once it has one; `_initializing` while the first is on
        # its way (later ones wait for it).
        self.initialize_result: dict[str, Any] | None = None
        self._initializing: anyio.Event | None = None
        self._initialized_sent = False

    @property
    def open(self) -> bool:
        """Taking clients: started, not gone, not closing for want of them."""
        return self._link is not None and not self.closed and not self._scope.cancel_called

    async def serve(self, connect: Connect, *, task_status: TaskStatus[None]) -> None:
        """Connect (`connect()`: `upstream.connect` of the spec) and pump the upstream's messages to the
        clients until it goes away or lingers out."""
        failure: str | None = None
        started = False
        try:
            with self._scope:
                async with connect() as link, anyio.create_task_group() as tg:
                    self._link, self._tg = link, tg
                    task_status.started()
                    started = True
                    await self._pump(link)
                    failure = link.failure()
                    tg.cancel_scope.cancel()
        except UpstreamStartError as exc:
            self.start_failure = failure = str(exc)
            task_status.started()
        except Exception as exc:  # one upstream's failure must never take the guard (or its other upstreams) down
            logger.exception("shared upstream %s failed", self.label)
            failure = f"upstream {self.label} failed: {describe(exc)}"
            if not started:
                self.start_failure = failure
                task_status.started()
        finally:
            self.closed = True
            for client in list(self.clients):
                client.end(failure or (self._link.failure() if self._link else None))
            logger.info("shared upstream %s closed (%d clients on it)", self.label, len(self.clients))
            self.done.set()

    def close(self) -> None:
        """Close it now, whoever is on it (their relays read the end of the upstream's messages)."""
        self._scope.cancel()

    def attach(self) -> _Client:
        """A new client on this upstream (call only while `open`)."""
        assert self._link is not None
        client = _Client(self, self._link.wants_routing_headers)
        self.clients.add(client)
        self._scope.deadline = math.inf
        return client

    async def detach(self, client: _Client) -> None:
        """The client left: its requests still in flight are cancelled upstream, and the upstream's requests to
        it are answered with an error; once no client is left, the upstream closes after `linger_s`."""
        if client not in self.clients:
            return
        self.clients.discard(client)
        client.leave()
        owed: list[types.JSONRPCMessage] = []
        for shared_id, sent in list(self._sent.items()):
            if sent.client is client:
                self._forget(shared_id)
                owed.append(_cancelled(shared_id, "the client left"))
        for asked_id, asked in list(self._asked.items()):
            if asked.client is client:
                self._asked.pop(asked_id)
                self._asked_ids.discard(asked.upstream_id)
                owed.append(_error(asked.upstream_id, types.INTERNAL_ERROR, "the client left before answering"))
        for message in owed:
            await self._up_quietly(message)
        if not self.clients:
            self._scope.deadline = anyio.current_time() + self._linger_s

    async def initialize(self, params: dict[str, Any]) -> None:
        """Initialise the upstream on no client's behalf (a warm upstream): the handshake, then `initialized`.

        Raises:
            UpstreamStartError: it answered with an error, or went away."""
        done = self._initializing = anyio.Event()
        shared_id = next(self._ids)
        waiter = _Client(self, False)
        self._sent[shared_id] = _Sent(waiter, shared_id, None, initialize=True)
        try:
            await self._up(types.JSONRPCRequest(jsonrpc="2.0", id=shared_id, method="initialize", params=params))
            with anyio.move_on_after(INITIALIZE_S):
                await done.wait()
        finally:
            waiter.leave()
        if self.initialize_result is None:
            raise UpstreamStartError(f"upstream {self.label} did not initialize within {INITIALIZE_S:g} s")
        self._initialized_sent = True
        await self._up(types.JSONRPCNotification(jsonrpc="2.0", method="notifications/initialized"))

    # a client's relay -> the upstream

    async def _from_client(self, client: _Client, item: SessionMessage) -> None:
        if self.closed:
            raise anyio.ClosedResourceError  # the relay reads it as the upstream gone
        message = item.message
        if isinstance(message, types.JSONRPCRequest):
            if message.method == "initialize" and (self._initializing is not None or self.initialize_result):
                assert self._tg is not None
                self._tg.start_soon(self._answer_initialize, client, message.id)
                return
            await self._request(client, message, item)
        elif isinstance(message, types.JSONRPCNotification):
            if message.method == "notifications/initialized":
                if self._initialized_sent:
                    return  # the upstream was initialised once; it is told so once
                self._initialized_sent = True
            elif message.method == "notifications/cancelled":
                request_id = (message.params or {}).get("requestId")
                shared_id = client.in_flight.get(request_id) if isinstance(request_id, str | int) else None
                if shared_id is None:
                    return  # nothing of this client's in flight under that id
                self._forget(shared_id)
                message = _cancelled(shared_id, (message.params or {}).get("reason"))
            await self._up(message, item)
        else:  # the client's answer to a request of the upstream's
            asked = self._asked.get(message.id) if type(message.id) is int else None
            if asked is None or asked.client is not client:
                logger.warning("dropped a client's answer to no request of the upstream's it was asked")
                return
            del self._asked[message.id]  # type: ignore[arg-type]
            self._asked_ids.discard(asked.upstream_id)
            if isinstance(message, types.JSONRPCResponse):
                answer: types.JSONRPCMessage = types.JSONRPCResponse(
                    jsonrpc="2.0", id=asked.upstream_id, result=message.result
                )
            else:
                answer = types.JSONRPCError(jsonrpc="2.0", id=asked.upstream_id, error=message.error)
            await self._up(answer, item)

    async def _request(self, client: _Client, message: types.JSONRPCRequest, item: SessionMessage) -> None:
        shared_id = next(self._ids)
        params = message.params
        token = None
        if params is not None and isinstance(meta := params.get("_meta"), dict) and "progressToken" in meta:
            token = meta["progressToken"]
            params = {**params, "_meta": {**meta, "progressToken": shared_id}}
        sent = _Sent(client, message.id, token, initialize=message.method == "initialize")
        if sent.initialize:
            self._initializing = anyio.Event()
        self._sent[shared_id] = sent
        if token is not None:
            self._tokens[shared_id] = sent
        client.in_flight[message.id] = shared_id
        renamed = types.JSONRPCRequest(jsonrpc="2.0", id=shared_id, method=message.method, params=params)
        if params is None:
            renamed = types.JSONRPCRequest(jsonrpc="2.0", id=shared_id, method=message.method)
        try:
            await self._up(renamed, item)
        except BaseException:
            self._forget(shared_id)
            raise

    async def _answer_initialize(self, client: _Client, request_id: types.RequestId) -> None:
        """A later client's `initialize`: the upstream's own InitializeResult, under the client's id."""
        if self._initializing is not None:
            await self._initializing.wait()
        if self.initialize_result is None:
            error = types.ErrorData(code=types.INTERNAL_ERROR, message=f"upstream {self.label} did not initialize")
            await client.deliver(types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error))
            return
        await client.deliver(types.JSONRPCResponse(jsonrpc="2.0", id=request_id, result=self.initialize_result))

    def _forget(self, shared_id: int) -> _Sent | None:
        sent = self._sent.pop(shared_id, None)
        self._tokens.pop(shared_id, None)
        if sent is not None and sent.client.in_flight.get(sent.client_id) == shared_id:
            del sent.client.in_flight[sent.client_id]
        if sent is not None and sent.initialize and self._initializing is not None:
            # Answered, cancelled or abandoned: the initializes waiting for it go on (answered from its result,
            # or told it failed), and the next one goes upstream itself.
            done, self._initializing = self._initializing, None
            done.set()
        return sent

    async def _up(self, message: types.JSONRPCMessage, item: SessionMessage | None = None) -> None:
        if self._link is None:
            raise anyio.ClosedResourceError
        await self._link.send(SessionMessage(message, metadata=item.metadata if item is not None else None))

    async def _up_quietly(self, message: types.JSONRPCMessage) -> None:
        """Send what no client waits on (guard's own answers to the upstream): an upstream that can no longer
        take it is going away, and its reader will say so."""
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await self._up(message)

    # the upstream -> its clients

    async def _pump(self, link: UpstreamLink) -> None:
        with suppress(anyio.ClosedResourceError, anyio.EndOfStream):
            async for item in link.messages:
                if isinstance(item, Exception):
                    logger.warning("%s", item)
                    continue
                message = item.message
                if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
                    await self._answered(message)
                elif isinstance(message, types.JSONRPCRequest):
                    await self._asks(message)
                elif message.method == "notifications/progress":
                    await self._progress(message)
                elif message.method == "notifications/cancelled":
                    await self._upstream_cancelled(message)
                else:
                    for client in list(self.clients):
                        await client.deliver(message)

    async def _answered(self, answer: types.JSONRPCResponse | types.JSONRPCError) -> None:
        sent = self._forget(answer.id) if type(answer.id) is int else None
        if sent is None:
            logger.warning("dropped an upstream %s that answers no client's request in flight", type(answer).__name__)
            return
        if sent.initialize and isinstance(answer, types.JSONRPCResponse) and self.initialize_result is None:
            self.initialize_result = answer.result  # before any waiter `_forget` woke runs
        if isinstance(answer, types.JSONRPCResponse):
            await sent.client.deliver(types.JSONRPCResponse(jsonrpc="2.0", id=sent.client_id, result=answer.result))
        else:
            await sent.client.deliver(types.JSONRPCError(jsonrpc="2.0", id=sent.client_id, error=answer.error))

    async def _progress(self, note: types.JSONRPCNotification) -> None:
        params = note.params or {}
        token = params.get("progressToken")
        sent = self._tokens.get(token) if type(token) is int else None
        if sent is None:
            logger.debug("dropped upstream progress for no client's request in flight")
            return
        params = {**params, "progressToken": sent.token}
        await sent.client.deliver(types.JSONRPCNotification(jsonrpc="2.0", method=note.method, params=params))

    async def _upstream_cancelled(self, note: types.JSONRPCNotification) -> None:
        """The upstream withdrew a request of its own: only the client it went to hears of it."""
        params = note.params or {}
        upstream_id = params.get("requestId")
        for asked_id, asked in list(self._asked.items()):
            if asked.upstream_id == upstream_id and type(asked.upstream_id) is type(upstream_id):
                del self._asked[asked_id]
                self._asked_ids.discard(asked.upstream_id)
                params = {**params, "requestId": asked_id}
                await asked.client.deliver(types.JSONRPCNotification(jsonrpc="2.0", method=note.method, params=params))

    async def _asks(self, request: types.JSONRPCRequest) -> None:
        """A request of the upstream's to a client: to the one that can have caused it, or refused."""
        if request.method == "ping":
            await self._up_quietly(types.JSONRPCResponse(jsonrpc="2.0", id=request.id, result={}))
            return
        if request.id in self._asked_ids:
            # Answering it would answer the first one too: nobody can tell the two apart.
            logger.warning("dropped an upstream request whose id is still awaiting a client's answer")
            return
        # The only client on it (a roots/list after its `initialized` is tied to no request), else the only one
        # with requests in flight: over stdio nothing in the request names the call that caused it.
        waiting = list(self.clients) if len(self.clients) == 1 else [one for one in self.clients if one.in_flight]
        if len(waiting) != 1:
            why = (
                f"guard shares this upstream among {len(self.clients)} clients and {len(waiting)} have requests in "
                f"flight: it cannot tell which one this {short(request.method)} is for "
                "(--upstream-sessions per-session gives each client its own upstream)"
            )
            logger.warning("refused the upstream's %s: %s", short(request.method), why)
            await self._up_quietly(_error(request.id, AMBIGUOUS, why))
            return
        [client] = waiting
        asked_id = next(self._ids)
        self._asked[asked_id] = _Asked(client, request.id)
        self._asked_ids.add(request.id)
        await client.deliver(
            types.JSONRPCRequest(jsonrpc="2.0", id=asked_id, method=request.method, params=request.params)
            if request.params is not None
            else types.JSONRPCRequest(jsonrpc="2.0", id=asked_id, method=request.method)
        )


def _cancelled(request_id: types.RequestId, reason: object) -> types.JSONRPCNotification:
    params: dict[str, Any] = {"requestId": request_id}
    if isinstance(reason, str):
        params["reason"] = reason
    return types.JSONRPCNotification(jsonrpc="2.0", method="notifications/cancelled", params=params)


def _error(request_id: types.RequestId, code: int, message: str) -> types.JSONRPCError:
    return types.JSONRPCError(jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=message))


@dataclass
class Upstreams:
    """Where each HTTP client session's upstream comes from, by `Sharing.mode`: its own connection (a warm one
    when the pool has one that fits), or a `SharedUpstream` per era (`shared`) or per identity and era
    (`per-identity`). Shared upstreams close `linger_s` after their last client left."""

    spec: UpstreamSpec
    sharing: Sharing = field(default_factory=Sharing)
    linger_s: float = 30 * 60.0
    _shared: dict[tuple[str | None, str], SharedUpstream] = field(default_factory=dict)
    _lock: anyio.Lock = field(default_factory=anyio.Lock)
    _tg: TaskGroup | None = None
    _warm: WarmPool | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Shared and warm upstreams live in here; leaving it stops every one of them."""
        from guard.proxy.warm import WarmPool  # it builds on this module

        async with anyio.create_task_group() as tg:
            self._tg = tg
            if self.sharing.mode == PER_SESSION and self.sharing.warm:
                self._warm = WarmPool(self.spec, self.sharing.warm)
                await tg.start(self._warm.run)
            if self.sharing.mode == SHARED:
                # Started now, so the first session waits for no process start; initialised by the first
                # session's `initialize`, as any shared upstream.
                tg.start_soon(self._start_early)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                self._tg = None

    async def _start_early(self) -> None:
        try:
            async with self.link(None, HANDSHAKE_ERA):
                pass
        except UpstreamStartError as exc:
            logger.warning("could not start the shared upstream ahead of its first session: %s", exc)

    @asynccontextmanager
    async def link(
        self, identity: str | None, era: str, initialize: dict[str, Any] | None = None
    ) -> AsyncIterator[UpstreamLink]:
        """An upstream link for one client session (`initialize`: its handshake params, if any).

        Raises:
            UpstreamStartError: the upstream cannot be started or reached."""
        if self.sharing.mode == PER_SESSION:
            warm = self._warm.take(initialize) if self._warm is not None and era == HANDSHAKE_ERA else None
            if warm is None:
                async with upstream.connect(self.spec) as link:
                    yield link
                return
            async with _attached(warm, warm.attach()) as link:
                yield link
            return
        key = (None if self.sharing.mode == SHARED else identity, era)
        async with self._lock:
            for stale in [k for k, one in self._shared.items() if one.closed]:
                del self._shared[stale]
            shared = self._shared.get(key)
            if shared is None or not shared.open:
                assert self._tg is not None, "Upstreams.running() must be entered first"
                shared = SharedUpstream(self.spec.label, self.linger_s)
                await self._tg.start(shared.serve, partial(upstream.connect, self.spec))
                if shared.start_failure is not None:
                    raise UpstreamStartError(shared.start_failure)
                self._shared[key] = shared
                logger.info("started a shared upstream %s for %s", self.spec.label, _key_label(key))
            client = shared.attach()
        async with _attached(shared, client) as link:
            yield link


@asynccontextmanager
async def _attached(shared: SharedUpstream, client: _Client) -> AsyncIterator[UpstreamLink]:
    try:
        yield client.link
    finally:
        with anyio.CancelScope(shield=True):
            await shared.detach(client)


def _key_label(key: tuple[str | None, str]) -> str:
    identity, era = key
    return f"the {era} era" + (f", identity {identity}" if identity is not None else "")
