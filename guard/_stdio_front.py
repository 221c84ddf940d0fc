"""Serve one client over the guard's own stdin/stdout (the Claude Desktop / Cursor shape).

The SDK's `stdio_server` reads and writes through worker threads: three thread hand-offs per call,
about half of the guard's cost per call. When stdin and stdout are pipes, sockets or terminals (the
case under every MCP client) the guard reads and writes them on the event loop instead; otherwise
(say, stdin redirected from a file) it falls back to the SDK transport. Either way fd 0 and fd 1 are
pointed away from the wire while serving, so a stray print cannot corrupt the protocol stream.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress

import anyio
import mcp_types as types
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

from guard import _upstream
from guard._limits import DEFAULT_LIMITS, Limits
from guard._relay import Background, ClientPort, Gate, Relay, Session

logger = logging.getLogger("guard")

# The longest line (one JSON-RPC message) the guard reads from its client.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


async def serve_stdio(
    spec: _upstream.UpstreamSpec,
    gate: Gate,
    session: Session,
    background: Sequence[Background] = (),
    limits: Limits = DEFAULT_LIMITS,
) -> str | None:
    """Relay until the client closes stdin or sends SIGTERM/SIGINT (returns None), or the upstream
    dies (returns why). The upstream is stopped on the way out in every case. `background` tasks
    (policy reloads, heartbeats) run meanwhile.

    Raises:
        UpstreamStartError: the upstream could not be started or reached.
    """
    failure: str | None = None
    async with anyio.create_task_group() as tg:

        async def relay() -> None:
            nonlocal failure
            async with _upstream.connect(spec) as link, _client_port() as client:
                logger.info("relaying stdio client session %s to %s", session.id, spec.label)
                failure = await Relay(session, gate, client, link, limits).run()
            tg.cancel_scope.cancel()

        tg.start_soon(_stop_on_signal, tg.cancel_scope)
        for task in background:
            tg.start_soon(task)
        await relay()
    return failure


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    # MCP clients stop a stdio server with SIGTERM when it does not exit on its own; stop the
    # upstream too rather than die and leave it running.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            logger.info("stopping on %s", signal.Signals(signum).name)
            scope.cancel()
            return


@asynccontextmanager
async def _client_port() -> AsyncIterator[ClientPort]:
    if _pollable(0) and _pollable(1):
        async with _event_loop_stdio() as port:
            yield port
    else:
        async with stdio_server() as (read, write):
            yield ClientPort.of_streams(read, write)


def _pollable(fd: int) -> bool:
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


@asynccontextmanager
async def _event_loop_stdio() -> AsyncIterator[ClientPort]:
    loop = asyncio.get_running_loop()
    wire_in, wire_out = os.dup(0), os.dup(1)
    # Divert fds 0 and 1 while serving: children and stray prints read EOF and write to stderr.
    saved_in, saved_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    reader = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES)
    read_transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire_in, "rb", buffering=0)
    )
    write_transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(wire_out, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(write_transport, protocol, None, loop)

    async def messages() -> AsyncIterator[SessionMessage | Exception]:
        while line := await reader.readline():
            if line.strip():
                try:
                    yield SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
                except ValueError as exc:
                    yield exc

    async def send(message: SessionMessage) -> None:
        writer.write(message.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n")
        await writer.drain()

    async def close() -> None:
        with suppress(OSError):
            await writer.drain()
        writer.close()

    try:
        yield ClientPort(messages(), send, close)
    finally:
        read_transport.close()
        if not writer.is_closing():
            writer.close()
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)
