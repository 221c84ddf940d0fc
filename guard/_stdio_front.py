"""Serve one client over the guard's own stdin/stdout (the Claude Desktop / Cursor shape)."""

from __future__ import annotations

import logging

from mcp.server.stdio import stdio_server

from guard import _upstream
from guard._relay import Gate, Relay, Session

logger = logging.getLogger("guard")


async def serve_stdio(spec: _upstream.UpstreamSpec, gate: Gate, session: Session) -> str | None:
    """Relay until the client closes stdin (returns None) or the upstream dies (returns why).

    Raises:
        UpstreamStartError: the upstream could not be started or reached.
    """
    async with _upstream.connect(spec) as link, stdio_server() as (client_read, client_write):
        logger.info("relaying stdio client session %s to %s", session.id, spec.label)
        return await Relay(session, gate, client_read, client_write, link).run()
