"""A stdio upstream that only lists tools, for `guard init`: a few of 402-mcp's tool names (one in the old
snake case), an unknown tool with annotations, and one whose name and description need quoting. It
serves tools/list two tools a page, so the client has to follow cursors. Calls are not answered.
"""

from __future__ import annotations

from typing import Any

import anyio
import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

OBJECT: dict[str, Any] = {"type": "object"}
TOOLS = [
    types.Tool(name="l402-balance", description="Credits left at an origin.", input_schema=OBJECT),
    types.Tool(name="l402_fetch", description="Fetch a URL, paying its L402 invoice.", input_schema=OBJECT),
    types.Tool(name="l402-pay", description="Pay an invoice.", input_schema=OBJECT),
    types.Tool(
        name="mystery-tool",
        description="Does something nobody reviewed.\nSecond line, not shown.",
        input_schema=OBJECT,
        annotations=types.ToolAnnotations(
            title="Mystery", read_only_hint=True, destructive_hint=False, open_world_hint=True
        ),
    ),
    types.Tool(
        name='odd: "name" # not a comment',
        description="Line one: {not: yaml} # still\ttext\x07 " + "x" * 200 + "\u2028second: line",
        input_schema=OBJECT,
    ),
]
PAGE = 2


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    start = int(params.cursor) if params is not None and params.cursor else 0
    end = start + PAGE
    return types.ListToolsResult(tools=TOOLS[start:end], next_cursor=str(end) if end < len(TOOLS) else None)


server = Server("fake-402-mcp", version="0.0.1", on_list_tools=list_tools)


async def main() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
