"""Reading one client message off the wire, before anything acts on it.

The SDK's message adapter reads `{"id": null, "method": "tools/call"}` (or an id of `1.5`, `true`, `[1]`,
`{}`) as a *notification*: the bad id is silently dropped, and a notification needs no answer, so a relay
would forward it without a decision. Every front therefore reads a client's bytes here first: the raw JSON
is checked for what the relay relies on (ids, progress tokens, cancellation targets), then validated.
"""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types
from mcp.shared.message import SessionMessage
from pydantic import ValidationError


class MessageRefused(Exception):
    """A client message the guard will not act on. `request_id` is the id to answer (None: answer with a
    null id); `answerable` is False for a notification (nobody waits for its answer: drop it)."""

    def __init__(self, code: int, message: str, request_id: types.RequestId | None = None, *, answerable: bool = True):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.answerable = answerable


def usable_id(value: Any) -> bool:
    """A JSON-RPC id or progress token the guard can key on: a string or an integer (not a boolean)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def read_client_message(raw: bytes | str, max_bytes: int) -> SessionMessage:
    """One client message, checked and parsed.

    Raises:
        MessageRefused: too large, not JSON, not one JSON-RPC message, or a request whose id (or progress
            token) is not a string or an integer."""
    if len(raw) > max_bytes:
        raise MessageRefused(types.INVALID_REQUEST, f"message too large: the limit is {max_bytes} bytes")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise MessageRefused(types.PARSE_ERROR, "Parse error: the message is not valid JSON") from None
    if not isinstance(data, dict):
        raise MessageRefused(types.INVALID_REQUEST, "Invalid request: expected one JSON-RPC message (an object)")
    method = data.get("method")
    if method is not None:
        if "id" in data and not usable_id(data["id"]):
            raise MessageRefused(types.INVALID_REQUEST, "Invalid request: the id must be a string or an integer")
        request_id = data.get("id")
        params = data.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if isinstance(meta, dict) and "progressToken" in meta and not usable_id(meta["progressToken"]):
            raise MessageRefused(
                types.INVALID_REQUEST,
                "Invalid request: _meta.progressToken must be a string or an integer",
                request_id,
                answerable=request_id is not None,
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
        raise MessageRefused(types.INVALID_REQUEST, f"Invalid request: {where}", request_id) from None
