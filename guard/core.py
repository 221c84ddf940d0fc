"""What every part of guard shares, with no MCP SDK in it: the call a gate decides, the gate's protocol
(the relay's one interception point), and the one way to run a blocking (ledger) call off the event loop.

    client ─► proxy (relay) ─► Gate.call_tool(ToolCall, forward) ─► forward() ─► upstream
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import anyio.to_thread

JSON = dict[str, Any]
"""A JSON object as Python reads it."""

T = TypeVar("T")


@dataclass(frozen=True)
class Session:
    """One client session: the budget "session" of the policy."""

    id: str
    identity: str | None = None
    transport: Literal["stdio", "http"] = "stdio"


@dataclass(frozen=True)
class ToolCall:
    """A `tools/call` as the gate sees it."""

    session: Session
    request_id: str | int
    name: str
    arguments: JSON
    meta: JSON | None


Background = Callable[[], Coroutine[Any, Any, None]]
"""A task a front runs while it serves (a policy watcher, a heartbeat); cancelled when it stops."""


class Forward(Protocol):
    """Send the call upstream; return the upstream's `CallToolResult` as JSON. Raises `UpstreamError`."""

    def __call__(self, meta: JSON | None = None) -> Awaitable[JSON]:
        """`meta`: entries set in the forwarded request's `_meta` (a W3C trace context: `traceparent`)."""
        ...


class SessionLink(Protocol):
    """What a gate may do with a live session besides answering its calls."""

    async def tools_changed(self) -> None:
        """Send the client `notifications/tools/list_changed`."""
        ...

    async def call(self, name: str, arguments: JSON) -> JSON:
        """Make a `tools/call` of the guard's own on this session's upstream; return its result.

        Raises:
            UpstreamError: the upstream answered with an error, went away, or did not answer in time."""
        ...


class Gate(Protocol):
    """The one interception point: policy, payments and the ledger live behind it."""

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

    def call_refused(self, session: Session, tool: str, reason: str) -> None:
        """Record a tools/call the relay refused or dropped before any decision (no usable id, an id already
        in flight, unreadable params): it never reaches `call_tool`. Must not block."""
        ...


class Scrape(Protocol):
    """What the HTTP front serves at `/metrics` (`guard.operators.metrics.PrometheusMetrics` is one)."""

    content_type: str

    def exposition(self) -> bytes:
        """The metrics now, in `content_type`'s format (blocking: it may read the ledger)."""
        ...


class OpenGate:
    """Forwards everything unchanged: the relay with no policy."""

    async def call_tool(self, call: ToolCall, forward: Forward) -> JSON:
        return await forward()

    async def list_tools(self, session: Session, result: JSON) -> JSON:
        return result

    def subscribe(self, session: Session, link: SessionLink) -> Callable[[], None]:
        return lambda: None

    def call_refused(self, session: Session, tool: str, reason: str) -> None:
        return None  # no audit trail without a policy (the relay logs the refusal)


async def off_loop(function: Callable[..., T], *args: Any) -> T:
    """Run a blocking call (the ledger's, a file read) in a worker thread, not on the event loop."""
    return await anyio.to_thread.run_sync(function, *args)
