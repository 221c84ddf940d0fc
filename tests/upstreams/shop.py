"""A fake paying upstream (stdio, mcp 2.3 low-level server) that keeps its own record of what was paid.

Each payment is appended as a JSON line `{"tool", "item", "amount"}` to the file named by
`SHOP_RECORD` *before* the tool answers, so tests can cross-check the guard's ledger against it.
Tools:
- `buy {item, amount}`: pays `amount` and returns "bought <item>".
- `browse {q}`: reads; pays nothing.
- `die {amount}`: pays, then the process exits mid-call (the guard cannot know the outcome).
- `refuse {amount}`: answers with a JSON-RPC error (invalid params): the tool did not run.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import anyio
import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

AMOUNT = {"type": "object", "properties": {"item": {"type": "string"}, "amount": {"type": "integer"}}}
TOOLS = [
    types.Tool(name="buy", description="Pay for an item.", input_schema=AMOUNT),
    types.Tool(name="browse", description="Look around.", input_schema={"type": "object"}),
    types.Tool(name="die", description="Pay, then exit mid-call.", input_schema=AMOUNT),
    types.Tool(name="refuse", description="Refuse the request.", input_schema=AMOUNT),
]


def paid(tool: str, arguments: dict[str, Any]) -> None:
    with open(os.environ["SHOP_RECORD"], "a") as record:
        record.write(json.dumps({"tool": tool, "item": arguments.get("item"), "amount": arguments.get("amount")}))
        record.write("\n")


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    arguments = params.arguments or {}
    if params.name == "buy":
        paid("buy", arguments)
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"bought {arguments.get('item')}")])
    if params.name == "browse":
        return types.CallToolResult(content=[types.TextContent(type="text", text="nothing to see")])
    if params.name == "die":
        paid("die", arguments)
        sys.stderr.write("shop: dying after paying\n")
        sys.stderr.flush()
        os._exit(9)
    if params.name == "refuse":
        raise MCPError(code=types.INVALID_PARAMS, message="shop refuses this request")
    raise MCPError(code=types.INVALID_PARAMS, message=f"unknown tool {params.name}")


async def main() -> None:
    server = Server("shop", on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
