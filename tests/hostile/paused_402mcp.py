"""The fake 402-mcp (tests/upstreams/fake_402mcp.py) with a paying call a test can hold in flight.

With FAKE_PAUSE set to the path of a FIFO, `l402-fetch` first reports progress ("paused"), then waits until a
line can be read from that FIFO, and only then pays and answers as the fake does. The test sees the progress
notification, does what it wants while the payment is in flight, then writes a line to release it.

Run as a script (`python tests/hostile/paused_402mcp.py`): it serves over stdio, as the fake does.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import mcp.types as types
from mcp.server import ServerRequestContext

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "upstreams"))

# Run as a script, like the fakes: they import each other from their folder.
import fake_402mcp
from _fake_state import serve


def wait_for_release(fifo: str) -> None:
    with open(fifo) as released:  # blocks until the test opens the FIFO to write
        released.readline()


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    fifo = os.environ.get("FAKE_PAUSE")
    if params.name == "l402-fetch" and fifo:
        await ctx.session.report_progress(0, None, "paused")
        await anyio.to_thread.run_sync(wait_for_release, fifo)
    return await fake_402mcp.call_tool(ctx, params)


if __name__ == "__main__":
    serve("402-mcp", "4.2.1", fake_402mcp.TOOLS, call_tool, fake_402mcp.STATE)
