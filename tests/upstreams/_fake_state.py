"""What every fake upstream (tests/upstreams/fake_*.py) shares: its JSON state file, its clock, its serving.

- `FakeState(defaults)`: the state at FAKE_STATE (a JSON file). `load()` reads it again at every call
  (a test may edit it between calls) and fills in missing keys from `defaults` (deep copies);
  `save(state)` writes it atomically (tmp file + os.replace). Without FAKE_STATE the state lives in
  memory only.
- `clock(state)`: the fake clock: state `now`, else FAKE_NOW, else real time (epoch seconds).
- `knobs_for(state, *keys)`: the scenario knobs (state `outcomes`) that apply to any of `keys` or "*".
- `parse_time(value)`, `iso(ts)`: epoch seconds or ISO-8601 in; JavaScript's `Date.toISOString()` out.
- `serve(name, version, tools, call_tool, state)`: run the fake as an MCP server over stdio (the state
  file is written once at start, defaults filled in); `dispatch(state, handlers)`: a call_tool that runs
  `handlers[tool](state, arguments)` on the loaded state and saves it.

The fakes run as scripts (this folder is then sys.path[0]), so they import it as `_fake_state`.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError

JSON = dict[str, Any]
CallTool = Callable[[ServerRequestContext[Any], types.CallToolRequestParams], Awaitable[types.CallToolResult]]
Handler = Callable[[JSON, JSON], types.CallToolResult]


class FakeState:
    """A fake's state: the FAKE_STATE file when there is one, else memory; `defaults` fill in what is missing."""

    def __init__(self, defaults: JSON) -> None:
        self.defaults = defaults
        self.path = os.environ.get("FAKE_STATE") or None
        self._state: JSON = {}

    def load(self) -> JSON:
        """The current state: the file when there is one (a test may have edited it), else memory."""
        if self.path and Path(self.path).exists():
            text = Path(self.path).read_text()
            self._state = json.loads(text) if text.strip() else {}
        for key, value in self.defaults.items():
            self._state.setdefault(key, copy.deepcopy(value))
        return self._state

    def save(self, state: JSON) -> None:
        """Write the state atomically (tmp file + os.replace)."""
        if not self.path:
            return
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, self.path)


def parse_time(value: Any) -> float:
    """Epoch seconds (a number or a numeric string) or ISO-8601."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


def clock(state: JSON) -> float:
    """The fake clock: state `now`, else FAKE_NOW, else real time (epoch seconds)."""
    if state.get("now") is not None:
        return parse_time(state["now"])
    if os.environ.get("FAKE_NOW"):
        return parse_time(os.environ["FAKE_NOW"])
    return time.time()


def knobs_for(state: JSON, *keys: str | None) -> set[str]:
    """The scenario knobs in state `outcomes` ({key: knob or [knobs]}) that apply to any of `keys` or "*"."""
    found: set[str] = set()
    for key in (*keys, "*"):
        if key is None:
            continue
        value = state["outcomes"].get(key)
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, list):
            found.update(str(v) for v in value)
    return found


def iso(ts: float) -> str:
    """JavaScript's `Date.toISOString()`: millisecond precision, `Z`."""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def dispatch(state: FakeState, handlers: dict[str, Handler]) -> CallTool:
    """A call_tool that runs `handlers[tool](state, arguments)` on the loaded state, then saves the state."""

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        handler = handlers.get(params.name)
        if handler is None:
            raise MCPError(types.INVALID_PARAMS, f"Tool {params.name} not found")
        current = state.load()
        answer = handler(current, dict(params.arguments or {}))
        state.save(current)
        return answer

    return call_tool


def serve(name: str, version: str, tools: list[types.Tool], call_tool: CallTool, state: FakeState) -> None:
    """Run the fake as the MCP server `name` over stdio, listing `tools`; the state file is written at start."""

    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    server = Server(name, version=version, on_list_tools=list_tools, on_call_tool=call_tool)

    async def main() -> None:
        state.save(state.load())
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)
