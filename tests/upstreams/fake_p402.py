"""A fake `@p402/mcp-server`: a real MCP server over stdio; the P402 router (and its money) is simulated.

Run: `python tests/upstreams/fake_p402.py`, or behind the guard: `guard run -- python tests/upstreams/fake_p402.py`.

Tools: p402_chat, p402_create_session, p402_get_session, p402_list_models, p402_compare_providers,
p402_health, p402_agent_status. Results are one text content item holding pretty-printed JSON;
failures are plain text `Error: ...` with isError, as the real wrapper sends them. Budget numbers
are USD floats, like the router's.

Sessions: `{id: "sess_<24 hex>", status, budget: {total_usd, used_usd, remaining_usd,
utilization_percent}, expires_at}`; `status` is active | exhausted | expired | ended | revoked. The
router turns `active` into `expired` on read once `expires_at` has passed (fake clock), and into
`exhausted` once `remaining_usd` reaches 0. `p402_chat` with a `session_id` charges the call's cost
to that session's `used_usd` (it may overshoot the total by the last call: remaining is
`max(0, total - used)`), and refuses with `Error: ...` when the session is not active.

Environment:
- FAKE_STATE: path of the JSON state file. Read at start and before every call (a test may edit it
  between calls), written atomically after every change. Without it the state lives in memory.
  (The state file, clock and stdio serving: tests/upstreams/_fake_state.py.)
- FAKE_NOW: the clock (epoch seconds or ISO-8601) when the state has no `now`.
- P402_API_KEY, P402_ROUTER_URL: accepted and ignored (P402_ROUTER_URL is echoed by p402_health).

State file keys (optional; defaults are filled in and written back):
- `now`: the clock; overrides FAKE_NOW; null = real time.
- `chat_cost_usd` (0.0123): what one p402_chat costs; `model_costs`: {model: usd} overrides it.
- `session_charging` (true): false = chat with a session_id does NOT raise that session's used_usd
  (the unverified behaviour UPSTREAMS.md warns about); the cost is still reported and recorded.
- `chat_error`: a message: p402_chat fails with `Error: <message>` and charges nothing.
- `sessions`: {id: {id, status, total_usd, used_usd, expires_at, agent_id, session_key, created_at}}.
- `payments` (append-only): {tool, amount (usd_micro, int), unit: "usd_micro", cost_usd (float),
  request_id, session_id, model, at} for every charged chat.
"""

from __future__ import annotations

import json
import os
import secrets
from typing import Any

import mcp.types as types

try:  # run as a script: this folder is sys.path[0]
    from _fake_state import FakeState, clock, dispatch, iso, parse_time, serve
except ImportError:  # imported as tests.upstreams.fake_p402
    from tests.upstreams._fake_state import FakeState, clock, dispatch, iso, parse_time, serve

JSON = dict[str, Any]

MODELS = [
    {"id": "gpt-4o-mini", "provider": "openai", "input_per_1k_usd": 0.00015, "output_per_1k_usd": 0.0006},
    {"id": "claude-3-5-haiku", "provider": "anthropic", "input_per_1k_usd": 0.0008, "output_per_1k_usd": 0.004},
    {"id": "llama-3.1-70b", "provider": "groq", "input_per_1k_usd": 0.00059, "output_per_1k_usd": 0.00079},
]
DEFAULTS: JSON = {
    "now": None,
    "chat_cost_usd": 0.0123,
    "model_costs": {},
    "session_charging": True,
    "chat_error": None,
    "sessions": {},
    "payments": [],
}

STATE = FakeState(DEFAULTS)


def usd(value: float) -> float:
    """Round away float noise the way the router's JSON shows amounts (6 decimals)."""
    return round(float(value), 6)


# --- results -----------------------------------------------------------------------------------


def ok(obj: Any) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=json.dumps(obj, indent=2))])


def error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=f"Error: {message}")], is_error=True)


# --- sessions ----------------------------------------------------------------------------------


def refresh(state: JSON, session: JSON) -> None:
    """What the router does on read: active -> expired after expires_at, -> exhausted at 0 remaining."""
    if session["status"] == "active" and clock(state) >= parse_time(session["expires_at"]):
        session["status"] = "expired"
    total = float(session["total_usd"])
    if session["status"] == "active" and usd(total - float(session["used_usd"])) <= 0:
        session["status"] = "exhausted"


def view(session: JSON) -> JSON:
    total = float(session["total_usd"])
    used = float(session["used_usd"])
    return {
        "id": session["id"],
        "status": session["status"],
        "budget": {
            "total_usd": usd(total),
            "used_usd": usd(used),
            "remaining_usd": usd(max(0.0, total - used)),
            "utilization_percent": round(used / total * 100, 2) if total > 0 else 0,
        },
        "expires_at": session["expires_at"],
    }


def tool_create_session(state: JSON, args: JSON) -> types.CallToolResult:
    budget = args.get("budget_usd")
    if isinstance(budget, bool) or not isinstance(budget, int | float) or budget <= 0:
        return error("budget_usd must be a positive number")
    hours = args.get("expires_in_hours", 24)
    if isinstance(hours, bool) or not isinstance(hours, int | float) or hours <= 0:
        return error("expires_in_hours must be a positive number")
    now = clock(state)
    session_id = f"sess_{secrets.token_hex(12)}"
    session = {
        "id": session_id,
        "status": "active",
        "total_usd": float(budget),
        "used_usd": 0.0,
        "expires_at": iso(now + float(hours) * 3600),
        "agent_id": args.get("agent_id"),
        "session_key": f"p402_sk_live_{secrets.token_hex(24)}",
        "created_at": iso(now),
    }
    state["sessions"][session_id] = session
    return ok({**view(session), "session_key": session["session_key"]})


def tool_get_session(state: JSON, args: JSON) -> types.CallToolResult:
    session_id = str(args.get("session_id", ""))
    session = state["sessions"].get(session_id)
    if session is None:
        return error(f"Session {session_id} not found")
    refresh(state, session)
    return ok(view(session))


def tool_chat(state: JSON, args: JSON) -> types.CallToolResult:
    message = args.get("message")
    if not isinstance(message, str) or not message:
        return error("message is required")
    session_id = args.get("session_id")
    session = None
    if session_id is not None:
        session = state["sessions"].get(session_id)
        if session is None:
            return error(f"Session {session_id} not found")
        refresh(state, session)
        if session["status"] != "active":
            return error(f"Session {session_id} is {session['status']}: no budget can be spent on it")
    if state.get("chat_error"):
        return error(str(state["chat_error"]))
    model = args.get("model") or MODELS[0]["id"]
    provider = next((m["provider"] for m in MODELS if m["id"] == model), "openrouter")
    cost = float(state["model_costs"].get(model, state["chat_cost_usd"]))
    input_tokens = max(1, len(message.split()) * 4 // 3) + (
        len(str(args.get("system", "")).split()) if args.get("system") else 0
    )
    output_tokens = 42
    now = clock(state)
    request_id = f"req_{secrets.token_hex(8)}"
    if session is not None and state.get("session_charging", True):
        session["used_usd"] = float(session["used_usd"]) + cost
        refresh(state, session)
    state["payments"].append(
        {
            "tool": "p402_chat",
            "amount": round(cost * 1_000_000),
            "unit": "usd_micro",
            "cost_usd": cost,
            "request_id": request_id,
            "session_id": session_id,
            "model": model,
            "at": iso(now),
        }
    )
    return ok(
        {
            "response": f"(fake {model}) You said: {message[:200]}",
            "metadata": {
                "cost_usd": cost,
                "model": model,
                "provider": provider,
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "request_id": request_id,
                "mode": args.get("mode", "balanced"),
            },
        }
    )


def tool_list_models(state: JSON, args: JSON) -> types.CallToolResult:
    return ok({"models": MODELS})


def tool_compare_providers(state: JSON, args: JSON) -> types.CallToolResult:
    providers = [
        {
            "provider": m["provider"],
            "model": m["id"],
            "input_per_1k_usd": m["input_per_1k_usd"],
            "latency_ms": 300 + i * 150,
        }
        for i, m in enumerate(MODELS)
    ]
    return ok({"providers": providers, "cheapest": min(providers, key=lambda p: p["input_per_1k_usd"])["provider"]})


def tool_health(state: JSON, args: JSON) -> types.CallToolResult:
    return ok(
        {
            "status": "ok",
            "router_url": os.environ.get("P402_ROUTER_URL", "https://p402.io"),
            "timestamp": iso(clock(state)),
        }
    )


def tool_agent_status(state: JSON, args: JSON) -> types.CallToolResult:
    for session in state["sessions"].values():
        refresh(state, session)
    sessions = list(state["sessions"].values())
    return ok(
        {
            "agent_id": args.get("agent_id") or "fake-agent",
            "active_sessions": sum(1 for s in sessions if s["status"] == "active"),
            "total_sessions": len(sessions),
            "total_spent_usd": usd(sum(float(p["cost_usd"]) for p in state["payments"])),
            "requests": len(state["payments"]),
        }
    )


STRING = {"type": "string"}
TOOL_SPECS: list[tuple[str, str, JSON]] = [
    (
        "p402_chat",
        "Send a chat request through the P402 router; it picks a provider and settles the cost.",
        {
            "type": "object",
            "properties": {
                "message": STRING,
                "mode": {"type": "string", "enum": ["cost", "quality", "speed", "balanced"]},
                "model": STRING,
                "session_id": STRING,
                "system": STRING,
                "preferred_rail": STRING,
                "analytics_tag": STRING,
            },
            "required": ["message"],
        },
    ),
    (
        "p402_create_session",
        "Create a budget-capped session for an agent.",
        {
            "type": "object",
            "properties": {
                "budget_usd": {"type": "number", "exclusiveMinimum": 0},
                "agent_id": STRING,
                "expires_in_hours": {"type": "number", "default": 24},
            },
            "required": ["budget_usd"],
        },
    ),
    (
        "p402_get_session",
        "Read a session's live budget and status.",
        {"type": "object", "properties": {"session_id": STRING}, "required": ["session_id"]},
    ),
    ("p402_list_models", "List the models the router can use.", {"type": "object", "properties": {}}),
    ("p402_compare_providers", "Compare providers on price and latency.", {"type": "object", "properties": {}}),
    ("p402_health", "Router health.", {"type": "object", "properties": {}}),
    ("p402_agent_status", "Spend and sessions of this agent.", {"type": "object", "properties": {"agent_id": STRING}}),
]
TOOLS = [types.Tool(name=n, description=d, input_schema=s) for n, d, s in TOOL_SPECS]
HANDLERS = {
    "p402_chat": tool_chat,
    "p402_create_session": tool_create_session,
    "p402_get_session": tool_get_session,
    "p402_list_models": tool_list_models,
    "p402_compare_providers": tool_compare_providers,
    "p402_health": tool_health,
    "p402_agent_status": tool_agent_status,
}


if __name__ == "__main__":
    serve("p402-mcp-server", "1.0.0", TOOLS, dispatch(STATE, HANDLERS), STATE)
