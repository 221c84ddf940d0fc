"""A trivial stdio MCP upstream for benchmarks: one tool, `noop`, that answers "ok" at once.

Built on the mcp 2.3 low-level `Server` (handlers passed to the constructor, taking `(ctx, params)`), so the
upstream's own cost is as small as the SDK allows. It serves both protocol eras on the same streams.

    .venv/bin/python bench/trivial_upstream.py              # over stdio
    .venv/bin/python bench/trivial_upstream.py --http 8000  # over streamable HTTP at http://127.0.0.1:8000/mcp
    .venv/bin/python bench/trivial_upstream.py --http 8000 --json  # answering application/json, not SSE

Over HTTP it is the SDK's own streamable-HTTP app (a session per client, no session cap), run by uvicorn: what a
client reaches with no proxy in between. It answers each request with an SSE stream, as guard does, unless
`--json` (as mcp-proxy does: its SDK's `json_response=True`).
"""

from __future__ import annotations

import sys
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


def serve_http(port: int, json_response: bool) -> None:
    import uvicorn

    app = server.streamable_http_app(json_response=json_response, max_sessions=None, session_idle_timeout=None)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--http"]:
        serve_http(int(sys.argv[2]), json_response=sys.argv[3:4] == ["--json"])
    else:
        anyio.run(main)
