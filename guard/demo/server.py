"""A simulated L402 paying server for `guard demo`: the shapes of 402-mcp, a wallet of pretend sats.

Tools (as 402-mcp names and answers them, one text item of JSON): `l402-fetch-preview {url}` names a
price (`costSats`) without paying; `l402-fetch {url, autoPay}` pays the price from the wallet and
returns the body (`satsPaid`), or the 402 "not paid" answer when `autoPay` is off; `l402-balance
{origin}` reads the (empty) credential cache. No network, no real money.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

PRICES = {
    "https://api.example.com/joke": 60,
    "https://api.example.com/forecast": 80,
}
URL = {"type": "object", "properties": {"url": {"type": "string"}, "autoPay": {"type": "boolean"}}}
TOOLS = [
    types.Tool(name="l402-fetch-preview", description="Preview the price of an L402 resource.", input_schema=URL),
    types.Tool(name="l402-fetch", description="Fetch an L402 resource, paying if autoPay.", input_schema=URL),
    types.Tool(
        name="l402-balance",
        description="Credits left at an origin (local cache).",
        input_schema={"type": "object", "properties": {"origin": {"type": "string"}}},
    ),
]
wallet_sats = 10_000


def _answer(body: dict[str, Any], *, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(body, indent=2))], is_error=error
    )


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    global wallet_sats
    arguments = params.arguments or {}
    url = str(arguments.get("url", ""))
    price = PRICES.get(url)
    if params.name == "l402-balance":
        origin = str(arguments.get("origin", ""))
        return _answer({"error": f"No stored credentials for {origin}"}, error=True)
    if price is None:
        return _answer({"status": 404, "message": f"nothing at {url}"}, error=True)
    if params.name == "l402-fetch-preview":
        return _answer({"status": "preview", "endpoint": url, "protocol": "l402", "costSats": price})
    if params.name == "l402-fetch":
        if not arguments.get("autoPay"):
            return _answer({"status": 402, "costSats": price, "message": "autoPay is off: not paid"})
        wallet_sats -= price
        return _answer({"status": 200, "body": f"the resource at {url}", "creditsRemaining": None, "satsPaid": price})
    return _answer({"error": f"unknown tool {params.name}"}, error=True)


async def main() -> None:
    server = Server("guard-demo-l402", version="1.0.0", on_list_tools=list_tools, on_call_tool=call_tool)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


if __name__ == "__main__":
    anyio.run(main)
