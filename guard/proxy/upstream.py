"""Connections to the wrapped (upstream) MCP server: a stdio subprocess or a streamable-HTTP URL.

Both yield an `UpstreamLink`: the SDK's message streams plus a `failure()` that says, in words a
person can act on, why the upstream went away (exit status and stderr tail, or the HTTP error).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
import shutil
import signal
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from subprocess import PIPE
from typing import Any

import anyio
import httpx
import mcp_types as types
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage

from guard.errors import UpstreamStartError
from guard.proxy.wire import lines
from guard.redact import redact

logger = logging.getLogger("guard.upstream")

STDERR_TAIL_LINES = 20
# The longest line (one JSON-RPC message) read from an upstream: a longer one is skipped, and the request it
# answered times out. An upstream's answers (a fetched body) may be larger than what clients send.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# The longest stderr line kept (a longer one is skipped).
MAX_STDERR_LINE_BYTES = 64 * 1024
# How much is read from a pipe at a time (and buffered at most by its reader).
READ_CHUNK = 256 * 1024
# Grace periods when stopping a stdio upstream: after stdin closes, then after SIGTERM.
EXIT_GRACE_S = 2.0
TERM_GRACE_S = 2.0


@dataclass(frozen=True)
class StdioUpstream:
    """An upstream started as a subprocess; it inherits the guard's environment, with `env` over it."""

    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def environment(self) -> dict[str, str]:
        """What the process starts with: the guard's environment, `env` over it."""
        return {**os.environ, **self.env}

    @property
    def label(self) -> str:
        """The command line as shown in logs and errors; secrets passed as arguments are scrubbed."""
        return redact(shlex.join(self.command))

    @property
    def name(self) -> str:
        """A short name for the server (budgets with `scope: server`): the program, or the package or
        script a launcher runs (`npx -y 402-mcp` → 402-mcp)."""
        program = os.path.basename(self.command[0])
        if re.match(r"^(npx|node|bunx|bun|deno|uvx|pnpm|python[0-9.]*)$", program):
            target = next((word for word in self.command[1:] if not word.startswith("-")), program)
            return redact(os.path.basename(target).removesuffix(".py").removesuffix(".js"))
        return redact(program)

    def check(self) -> None:
        """Raise `UpstreamStartError` if the command cannot be found, before any client waits on it."""
        if shutil.which(self.command[0]) is None:
            raise UpstreamStartError(f"cannot start upstream `{self.label}`: command not found: {self.command[0]}")


@dataclass(frozen=True)
class HttpUpstream:
    """An upstream reached over streamable HTTP."""

    url: str

    @property
    def label(self) -> str:
        return redact(self.url)

    @property
    def name(self) -> str:
        return redact(httpx.URL(self.url).netloc.decode())

    def check(self) -> None:
        """Raise `UpstreamStartError` if nothing answers HTTP at the URL (any HTTP status means reachable)."""
        try:
            with httpx.Client(timeout=5.0) as client:
                client.request("GET", self.url, headers={"Accept": "text/event-stream"}, timeout=5.0).close()
        except httpx.HTTPError as exc:
            raise UpstreamStartError(f"upstream {self.label} is unreachable: {describe(exc)}") from exc


UpstreamSpec = StdioUpstream | HttpUpstream


def client_target(spec: UpstreamSpec) -> Any:
    """What the SDK's `Client` connects to for this upstream (the guard's own calls: init, refresh).

    A stdio upstream gets the guard's whole environment: the SDK would otherwise merge a minimal one."""
    from mcp import StdioServerParameters

    if isinstance(spec, StdioUpstream):
        return StdioServerParameters(command=spec.command[0], args=list(spec.command[1:]), env=spec.environment)
    return spec.url


@dataclass
class UpstreamLink:
    """An open connection to the upstream: its messages, a way to send it messages, and, once it is
    gone, why. `messages` ends when the upstream goes away; `send` raises `anyio.BrokenResourceError`
    (or `ClosedResourceError`, `OSError`) when it can no longer take messages."""

    label: str
    messages: AsyncIterator[SessionMessage | Exception]
    send: Callable[[SessionMessage], Awaitable[None]]
    # Whether 2026-07-28 requests need their routing headers (only a streamable-HTTP upstream reads them).
    wants_routing_headers: bool = False
    _failure: str | None = field(default=None)

    def failure(self) -> str:
        return self._failure or f"upstream {self.label} closed the connection"


@asynccontextmanager
async def connect(spec: UpstreamSpec) -> AsyncIterator[UpstreamLink]:
    """Open the upstream. Raises `UpstreamStartError` when it cannot be started at all."""
    if isinstance(spec, StdioUpstream):
        async with _stdio(spec) as link:
            yield link
    else:
        async with _http(spec) as link:
            yield link


@asynccontextmanager
async def _stdio(spec: StdioUpstream) -> AsyncIterator[UpstreamLink]:
    label = spec.label
    try:
        # Inherit the guard's whole environment: users put P402_API_KEY etc. in the client config.
        # asyncio's own pipes, not anyio's wrappers: those add an event-loop pass to every write.
        process = await asyncio.create_subprocess_exec(
            *spec.command,
            stdin=PIPE,
            stdout=PIPE,
            stderr=PIPE,
            env=spec.environment,
            start_new_session=True,
            limit=READ_CHUNK,
        )
    except OSError as exc:
        raise UpstreamStartError(f"cannot start upstream `{label}`: {exc.strerror or exc}") from exc
    assert process.stdin is not None and process.stdout is not None and process.stderr is not None
    stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
    stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    stderr_done = anyio.Event()

    # The relay reads and writes the pipes itself, with no queue or task in between: each hop costs
    # event-loop passes, and this is the hot path of every call.
    async def messages() -> AsyncIterator[SessionMessage | Exception]:
        with suppress(OSError):
            async for line in lines(partial(stdout.read, READ_CHUNK), MAX_MESSAGE_BYTES):
                if line is None:
                    yield ValueError(f"upstream {label} wrote a message over {MAX_MESSAGE_BYTES} bytes: skipped it")
                elif line.strip():
                    yield _parse(line, label)
        # stdout closed: the upstream is exiting. Wait (bounded) for its status and last words.
        with anyio.move_on_after(EXIT_GRACE_S):
            await process.wait()
            await stderr_done.wait()
        link._failure = _exit_story(label, process.returncode, stderr_tail)

    async def send(message: SessionMessage) -> None:
        stdin.write(message.message.model_dump_json(by_alias=True, exclude_unset=True).encode() + b"\n")
        await stdin.drain()

    link = UpstreamLink(label, messages(), send)

    async def read_stderr() -> None:
        try:
            with suppress(OSError):
                async for raw in lines(partial(stderr.read, READ_CHUNK), MAX_STDERR_LINE_BYTES):
                    if raw is None:
                        logger.info("upstream stderr: a line over %d bytes, skipped", MAX_STDERR_LINE_BYTES)
                        continue
                    text = redact(raw.decode("utf-8", "replace").rstrip())
                    stderr_tail.append(text)
                    logger.info("upstream stderr: %s", text)
        finally:
            stderr_done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_stderr)
        try:
            yield link
        finally:
            with anyio.CancelScope(shield=True):
                await _stop(process)
            tg.cancel_scope.cancel()


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Close stdin, give the upstream a moment to exit, then SIGTERM and SIGKILL its process group."""
    if process.stdin is not None:
        process.stdin.close()
    for sig, grace in ((None, EXIT_GRACE_S), (signal.SIGTERM, TERM_GRACE_S), (signal.SIGKILL, EXIT_GRACE_S)):
        if sig is not None:
            with suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, sig)
        with anyio.move_on_after(grace):
            await process.wait()
        if process.returncode is not None:
            return
    logger.warning("upstream process %d survived SIGKILL; abandoning it", process.pid)


def _parse(line: bytes, label: str) -> SessionMessage | Exception:
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
    except ValueError:
        # Not its content: it may carry a preimage or a token.
        return ValueError(
            f"upstream {label} wrote a line that is not a JSON-RPC message ({len(line)} bytes): skipped it"
        )


def _exit_story(label: str, status: int | None, stderr_tail: deque[str]) -> str:
    if status is None:
        how = "closed its stdout"
    elif status < 0:
        how = f"was killed by signal {signal.Signals(-status).name}"
    else:
        how = f"exited with status {status}"
    tail = " | ".join(line for line in stderr_tail if line)
    return f"upstream `{label}` {how}" + (f"; stderr tail: {tail}" if tail else "; no stderr output")


@asynccontextmanager
async def _http(spec: HttpUpstream) -> AsyncIterator[UpstreamLink]:
    # The SDK transport lets transport errors escape its task group; catch them here and turn them into
    # a closed link with a readable failure, so pending calls get an answer instead of a crashed guard.
    to_relay, read = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write, from_relay = anyio.create_memory_object_stream[SessionMessage](0)
    link = UpstreamLink(spec.label, _drain(read), write.send, wants_routing_headers=True)

    async def run(task_status: TaskStatus[None]) -> None:
        try:
            async with streamable_http_client(spec.url) as (up_read, up_write):
                task_status.started()

                async def downstream() -> None:
                    async with to_relay:
                        async for item in up_read:
                            if isinstance(item, Exception):
                                item = _describe_transport_error(spec.label, item)
                            await to_relay.send(item)

                async def upstream() -> None:
                    async with from_relay:
                        async for message in from_relay:
                            await up_write.send(message)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(downstream)
                    await upstream()
                    tg.cancel_scope.cancel()
        except Exception as exc:  # any transport failure ends the link with its story
            link._failure = f"upstream {spec.label} failed: {redact(describe(exc))}"
            logger.warning("%s", link._failure)
        finally:
            await to_relay.aclose()
            await from_relay.aclose()

    async with anyio.create_task_group() as tg:
        await tg.start(run)
        try:
            yield link
        finally:
            await write.aclose()
            await read.aclose()
            tg.cancel_scope.cancel()


async def _drain(
    stream: MemoryObjectReceiveStream[SessionMessage | Exception],
) -> AsyncIterator[SessionMessage | Exception]:
    with suppress(anyio.ClosedResourceError, anyio.EndOfStream):
        async for item in stream:
            yield item


def _describe_transport_error(url: str, exc: Exception) -> Exception:
    return ValueError(f"upstream {url} sent an unreadable message: {describe(exc)}")


def describe(exc: BaseException) -> str:
    """One line for an exception, looking inside exception groups (the SDK's task groups raise them)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if type(exc).__name__ not in text else text
