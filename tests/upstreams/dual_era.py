"""A small upstream on the mcp 2.3 low-level server; it speaks both protocol eras.

Run over stdio (`python -m tests.upstreams.dual_era`) or streamable HTTP (`... --http PORT`).
Tools:
- `echo {text}`: returns the text.
- `count {n}`: reports n progress steps, then returns "counted n".
- `wait {}`: reports one progress step, then waits until cancelled (for cancellation tests).
- `crash {}`: writes a last word to stderr and exits the process with status 7 mid-call.
- `calls {}`: how many tools/call this process has answered (shows which upstream session served).
- `ask {}`: asks the client (elicitation, a server-to-client request) and returns its answer.
- `roots {}`: asks the client for its roots and returns their URIs.
- `pid {}`: this process's id.
- `changed {}`: sends notifications/tools/list_changed and a log message, then returns "sent".
"""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
import mcp.types as types
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.stdio import stdio_server

TOOLS = [
    types.Tool(
        name="echo",
        description="Return the text.",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    ),
    types.Tool(
        name="count",
        description="Report n progress steps.",
        input_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
    ),
    types.Tool(name="wait", description="Wait until cancelled.", input_schema={"type": "object"}),
    types.Tool(name="crash", description="Exit mid-call.", input_schema={"type": "object"}),
    types.Tool(name="calls", description="Calls answered so far.", input_schema={"type": "object"}),
    types.Tool(name="pid", description="This process's id.", input_schema={"type": "object"}),
    types.Tool(name="ask", description="Elicit from the client.", input_schema={"type": "object"}),
    types.Tool(name="roots", description="List the client's roots.", input_schema={"type": "object"}),
    types.Tool(name="changed", description="Send list_changed and a log.", input_schema={"type": "object"}),
]

answered = 0


def text(value: str, *, error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=value)], is_error=error)


async def list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(tools=TOOLS)


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    global answered
    arguments = params.arguments or {}
    if params.name == "echo":
        answered += 1
        return text(str(arguments.get("text", "")))
    if params.name == "count":
        n = int(arguments.get("n", 3))
        for step in range(1, n + 1):
            await ctx.session.report_progress(step, n, f"step {step}")
        answered += 1
        return text(f"counted {n}")
    if params.name == "wait":
        await ctx.session.report_progress(1, None, "waiting")
        await anyio.sleep_forever()
    if params.name == "crash":
        sys.stderr.write("dual_era: simulated crash in the middle of a call\n")
        sys.stderr.flush()
        os._exit(7)
    if params.name == "calls":
        return text(str(answered))
    if params.name == "pid":
        return text(str(os.getpid()))
    if params.name == "ask":
        schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
        answer = await ctx.session.elicit_form("Pay 10 sat?", schema)  # type: ignore[arg-type]
        return text(f"{answer.action} {answer.content}")
    if params.name == "roots":
        roots = await ctx.session.list_roots()
        return text(" ".join(str(root.uri) for root in roots.roots))
    if params.name == "changed":
        await ctx.session.send_tool_list_changed()
        await ctx.session.send_log_message("info", "tools changed", logger="dual_era")
        return text("sent")
    return text(f"unknown tool {params.name}", error=True)


server = Server("dual-era", version="1.0.0", on_list_tools=list_tools, on_call_tool=call_tool)


async def serve_stdio() -> None:
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options(NotificationOptions(tools_changed=True)))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        import uvicorn

        port = int(sys.argv[2])
        uvicorn.run(server.streamable_http_app(host="127.0.0.1"), host="127.0.0.1", port=port, log_level="info")
    else:
        anyio.run(serve_stdio)


if __name__ == "__main__":
    main()
