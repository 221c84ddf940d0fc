"""A stdio upstream for the paying-call benchmark: `l402-fetch` answers at once as 402-mcp 4.2.1 does
after an automatic payment of 21 sat (the shape of the capture `paywall-limits-02-l402-fetch-autopay-ok`),
and `noop` answers "ok". Built on the mcp 2.3 low-level `Server`, so the upstream's own cost is small.

    .venv/bin/python bench/paying_upstream.py
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

TOOLS = [
    types.Tool(name="noop", description="Does nothing.", input_schema={"type": "object"}),
    types.Tool(
        name="l402-fetch", description="Fetches a URL, paying its L402 invoice.", input_schema={"type": "object"}
    ),
]
OK = types.TextContent(type="text", text="ok")
# What 402-mcp 4.2.1 answers for a fetch it paid 21 sat for (pretty-printed, as the real server does).
PAID = types.TextContent(
    type="text",
    text=json.dumps(
        {
            "status": 200,
            "headers": {"content-type": "application/json", "x-credit-balance": "16"},
            "body": '{"setup":"Why do programmers prefer dark mode?","punchline":"Because light attracts bugs."}',
            "creditsRemaining": 16,
            "satsPaid": 21,
        },
        indent=2,
    ),
)


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name == "noop":
        return types.CallToolResult(content=[OK])
    if params.name == "l402-fetch":
        return types.CallToolResult(content=[PAID])
    raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {params.name}")


server: Server[Any] = Server("paying-upstream", version="1.0", on_list_tools=list_tools, on_call_tool=call_tool)


async def main() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
