"""A trivial stdio MCP upstream for benchmarks: one tool, `noop`, that answers "ok" at once.

Built on the mcp 2.3 low-level `Server` (handlers passed to the constructor, taking `(ctx, params)`), so the
upstream's own cost is as small as the SDK allows. It serves both protocol eras on the same streams.

    .venv/bin/python bench/trivial_upstream.py
"""

from __future__ import annotations

from typing import Any

import anyio
import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

NOOP = types.Tool(
    name="noop",
    description="Does nothing and returns 'ok'.",
    input_schema={"type": "object", "properties": {}, "additionalProperties": False},
)
OK = types.TextContent(type="text", text="ok")


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[NOOP])


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name != "noop":
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")
    return types.CallToolResult(content=[OK])


server: Server[Any] = Server("trivial-upstream", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)


async def main() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
