"""Reading messages off the wire, before anything acts on them.

The SDK's message adapter reads `{"id": null, "method": "tools/call"}` (or an id of `1.5`, `true`, `[1]`,
`{}`) as a *notification*: the bad id is silently dropped, and a notification needs no answer, so a relay
would forward it without a decision. Every front therefore reads a client's bytes here first: the raw JSON
is checked for what the relay relies on (ids, progress tokens, cancellation targets), then validated.

`lines` splits a byte stream into lines of bounded length (the stdio front's client, a stdio upstream).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeGuard

import mcp_types as types
from mcp.shared.message import SessionMessage
from pydantic import ValidationError
from pydantic_core import from_json

from guard.errors import MessageRefused


def usable_id(value: Any) -> TypeGuard[types.RequestId]:
    """A JSON-RPC id or progress token the guard can key on: a string or an integer (not a boolean)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def too_large(max_bytes: int) -> MessageRefused:
    """The refusal of a message over `max_bytes` (its id is never read: answered with a null id)."""
    return MessageRefused(types.INVALID_REQUEST, f"message too large: the limit is {max_bytes} bytes")


def read_client_message(raw: bytes | str, max_bytes: int) -> SessionMessage:
    """One client message, checked and parsed.

    Raises:
        MessageRefused: too large, not JSON (or JSON no peer reads back: a lone surrogate, nesting past 200
            levels, a number past 4300 digits), not one JSON-RPC message, or a request whose id (or progress
            token) is not a string or an integer."""
    if len(raw) > max_bytes:
        raise too_large(max_bytes)
    try:
        # pydantic's own parser: it refuses what the guard could not write back out (a lone surrogate) and
        # what the SDK's peers would not read (nesting past its recursion limit).
        data = from_json(raw)
    except ValueError:
        raise MessageRefused(types.PARSE_ERROR, "Parse error: the message is not valid JSON") from None
    if not isinstance(data, dict):
        raise MessageRefused(types.INVALID_REQUEST, "Invalid request: expected one JSON-RPC message (an object)")
    method = data.get("method")
    params = data.get("params")
    tool = tool_named(params) if method == "tools/call" else None
    if method is not None:
        if "id" in data and not usable_id(data["id"]):
            raise MessageRefused(
                types.INVALID_REQUEST, "Invalid request: the id must be a string or an integer", tool=tool
            )
        request_id = data.get("id")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if isinstance(meta, dict) and "progressToken" in meta and not usable_id(meta["progressToken"]):
            raise MessageRefused(
                types.INVALID_REQUEST,
                "Invalid request: _meta.progressToken must be a string or an integer",
                request_id,
                answerable=request_id is not None,
                tool=tool,
            )
        if method == "notifications/cancelled" and not (
            isinstance(params, dict) and usable_id(params.get("requestId"))
        ):
            raise MessageRefused(types.INVALID_REQUEST, "notifications/cancelled needs a requestId", answerable=False)
    try:
        return SessionMessage(types.jsonrpc_message_adapter.validate_python(data, by_name=False))
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_input=False, include_url=False)
        )
        request_id = data.get("id") if usable_id(data.get("id")) and method is not None else None
        raise MessageRefused(types.INVALID_REQUEST, f"Invalid request: {where}", request_id, tool=tool) from None


def tool_named(params: Any) -> str:
    """The tool a tools/call names, as the audit trail records it."""
    name = params.get("name") if isinstance(params, dict) else None
    return name if isinstance(name, str) else "(no name)"


async def lines(read: Callable[[], Awaitable[bytes]], max_bytes: int) -> AsyncIterator[bytes | None]:
    """The lines of a stream that `read` returns in chunks (b"" at its end), without their newline; None for
    each line longer than `max_bytes`, skipped through its newline without being kept. (asyncio's `readline`
    drops the start of such a line and serves the rest as a new "line"; a reader that kept it whole would let
    one line take all memory.)"""
    line = bytearray()  # the start of a line that began in an earlier chunk
    skipping = False
    while chunk := await read():
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            if skipping:
                skipping = False
                yield None
            elif len(line) + end - start > max_bytes:
                line.clear()
                yield None
            elif line:
                line += chunk[start:end]
                whole = bytes(line)
                line.clear()
                yield whole
            else:
                yield chunk[start:end]
            start = end + 1
        if skipping or start == len(chunk):
            continue
        if len(line) + len(chunk) - start > max_bytes:
            line.clear()
            skipping = True
        else:
            line += chunk[start:]
    if skipping:
        yield None
    elif line:
        yield bytes(line)
