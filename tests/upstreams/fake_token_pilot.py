"""A fake Token Pilot `session_budget` tool (a token budget, never money), over stdio.

Run: `python tests/upstreams/fake_token_pilot.py` (behind the guard: `guard run -- python <that path>`).

Tool: `session_budget {sessionId}` -> pretty-printed JSON text with Token Pilot's payload:
`{semantics, sessionId, savedTokens, budgetTokens, burnFraction (0..1, 4 decimals), baseThreshold,
effectiveThreshold, adaptive, eventCount, avgSavedPerEvent, eventsUntilExhaustion, firstEventMs,
lastEventMs}`. The effective threshold follows Token Pilot's adaptive curve (burn < 0.3: base;
< 0.6: x0.75; < 0.8: x0.5; else x0.3, at least 50). An unknown session reads as one with no events.

Environment:
- FAKE_STATE: path of the JSON state file. Read at start and before every call (a test may edit it
  between calls), written atomically after every change. Without it the state lives in memory.
  (The state file and stdio serving: tests/upstreams/_fake_state.py.)

State file keys (optional; defaults are filled in and written back):
- `budget_tokens` (100000), `base_threshold` (300), `adaptive` (true): the configuration.
- `sessions`: {sessionId: {savedTokens, eventCount, firstEventMs, lastEventMs}}.
- `payments`: always empty (Token Pilot never pays); kept so every fake has the same record.
"""

from __future__ import annotations

import json
from typing import Any

import mcp.types as types
from mcp.server import ServerRequestContext
from mcp.shared.exceptions import MCPError

try:  # run as a script: this folder is sys.path[0]
    from _fake_state import FakeState, serve
except ImportError:  # imported as tests.upstreams.fake_token_pilot
    from tests.upstreams._fake_state import FakeState, serve

JSON = dict[str, Any]
MIN_FLOOR_LINES = 50
SEMANTICS = "burnFraction is hook-suppression pressure, NOT context-window occupancy. See session-budget.ts docs."

DEFAULTS: JSON = {"budget_tokens": 100_000, "base_threshold": 300, "adaptive": True, "sessions": {}, "payments": []}

STATE = FakeState(DEFAULTS)


def effective_threshold(base: int, saved: int, budget: int, enabled: bool) -> int:
    if not enabled or budget <= 0 or saved <= 0:
        return base
    burn = saved / budget
    multiplier = 1.0 if burn < 0.3 else 0.75 if burn < 0.6 else 0.5 if burn < 0.8 else 0.3
    if multiplier == 1.0:
        return base
    return max(round(base * multiplier), MIN_FLOOR_LINES)


def session_budget(state: JSON, session_id: str) -> JSON:
    stats = state["sessions"].get(session_id) or {}
    saved = int(stats.get("savedTokens", 0))
    events = int(stats.get("eventCount", 0))
    budget = max(0, int(state["budget_tokens"]))
    burn = min(1.0, max(0.0, saved / budget)) if budget > 0 else 0.0
    avg: float | None = None
    until: int | None = None
    if events > 0 and saved > 0:
        avg = saved / events
        if budget > 0:
            until = int(max(0, budget - saved) // avg)
    return {
        "semantics": SEMANTICS,
        "sessionId": session_id,
        "savedTokens": saved,
        "budgetTokens": budget,
        "burnFraction": round(burn, 4),
        "baseThreshold": int(state["base_threshold"]),
        "effectiveThreshold": effective_threshold(int(state["base_threshold"]), saved, budget, bool(state["adaptive"])),
        "adaptive": bool(state["adaptive"]),
        "eventCount": events,
        "avgSavedPerEvent": round(avg) if avg is not None else None,
        "eventsUntilExhaustion": until,
        "firstEventMs": stats.get("firstEventMs"),
        "lastEventMs": stats.get("lastEventMs"),
    }


TOOLS = [
    types.Tool(
        name="session_budget",
        description="Hook pressure for this session: tokens the Read hook suppressed against a reference budget.",
        input_schema={"type": "object", "properties": {"sessionId": {"type": "string"}}, "required": ["sessionId"]},
        annotations=types.ToolAnnotations(read_only_hint=True),
    )
]


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name != "session_budget":
        raise MCPError(types.INVALID_PARAMS, f"Tool {params.name} not found")
    state = STATE.load()
    payload = session_budget(state, str((params.arguments or {}).get("sessionId") or ""))
    return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(payload, indent=2))])


if __name__ == "__main__":
    serve("token-pilot", "1.0.0", TOOLS, call_tool, STATE)
