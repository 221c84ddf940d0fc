"""Serve one client over the guard's own stdin/stdout (the Claude Desktop / Cursor shape).

The SDK's `stdio_server` reads and writes through worker threads: three thread hand-offs per call,
about half of the guard's cost per call. When stdin and stdout are pipes, sockets or terminals (the
case under every MCP client) the guard reads and writes them on the event loop instead; otherwise
(say, stdin redirected from a file) through a worker thread. Either way fd 0 and fd 1 are pointed away
from the wire while serving, so a stray print cannot corrupt the protocol stream, and every line is read
with a bounded reader and checked by `wire.read_client_message` before the relay sees it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from functools import partial

import anyio
from mcp.shared.message import SessionMessage

from guard.core import Background, Gate, Session, off_loop
from guard.errors import MessageRefused
from guard.proxy import upstream
from guard.proxy.limits import DEFAULT_LIMITS, Limits
from guard.proxy.relay import ClientPort, Relay
from guard.proxy.wire import lines, read_client_message, too_large

logger = logging.getLogger("guard")

# How much is read from stdin at a time (and buffered at most by the pipe's reader).
READ_CHUNK = 256 * 1024


async def serve_stdio(
    spec: upstream.UpstreamSpec,
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
            async with upstream.connect(spec) as link, _client_port(limits.max_message_bytes) as client:
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
async def _client_port(max_message_bytes: int) -> AsyncIterator[ClientPort]:
    wire_in, wire_out = os.dup(0), os.dup(1)
    # Divert fds 0 and 1 while serving: children and stray prints read EOF and write to stderr.
    saved_in, saved_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    try:
        async with _reading(wire_in) as read, _writing(wire_out) as (write, hang_up):

            async def messages() -> AsyncIterator[SessionMessage | Exception]:
                async for line in lines(read, max_message_bytes):
                    if line is None:
                        yield too_large(max_message_bytes)
                    elif line.strip():
                        try:
                            yield read_client_message(line, max_message_bytes)
                        except MessageRefused as refused:
                            yield refused

            async def send(message: SessionMessage) -> None:
                await write(message.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n")

            yield ClientPort(messages(), send, hang_up)
    finally:
        os.dup2(saved_in, 0)
        os.dup2(saved_out, 1)
        os.close(saved_in)
        os.close(saved_out)


@asynccontextmanager
async def _reading(fd: int) -> AsyncIterator[Callable[[], Awaitable[bytes]]]:
    """`read()`: the next chunk of `fd` (b"" at its end), on the event loop when it can wait on `fd`."""
    if not _pollable(fd):
        try:
            yield partial(off_loop, os.read, fd, READ_CHUNK)
        finally:
            os.close(fd)
        return
    reader = asyncio.StreamReader(limit=READ_CHUNK)
    transport, _ = await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        yield partial(reader.read, READ_CHUNK)
    finally:
        transport.close()


@asynccontextmanager
async def _writing(fd: int) -> AsyncIterator[tuple[Callable[[bytes], Awaitable[None]], Callable[[], Awaitable[None]]]]:
    """`(write, hang_up)` for `fd`, on the event loop when it can wait on `fd`."""
    if not _pollable(fd):
        closed = False

        async def hang_up_file() -> None:
            nonlocal closed
            if not closed:
                closed = True
                os.close(fd)

        async def write_file(data: bytes) -> None:
            await off_loop(_write_all, fd, data)

        try:
            yield write_file, hang_up_file
        finally:
            await hang_up_file()
        return
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(fd, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)

    async def write(data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    async def hang_up() -> None:
        with suppress(OSError):
            await writer.drain()
        writer.close()

    try:
        yield write, hang_up
    finally:
        if not writer.is_closing():
            writer.close()


def _pollable(fd: int) -> bool:
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
