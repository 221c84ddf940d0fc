"""A fake MCP server with x402-priced tools (x402 v2, tool-result binding of spec transports-v2/mcp).

Run: `python tests/upstreams/fake_x402.py`, or behind the guard: `guard run -- python tests/upstreams/fake_x402.py`.
A real MCP server over stdio; only the money (verification and settlement on chain) is simulated.

Tools:
- `get_weather {city}`: scheme `exact`, amount "10000" (0.01 USDC, 6 decimals).
- `summarize {text}`: scheme `upto`, amount "50000" is the maximum; the settled amount is lower:
  2000 + 200 per word of `text`, capped at the maximum (or state `upto_settle[tool]`).
- `ping {}`: free.

Flow: a call without `params._meta["x402/payment"]` returns `isError: true` with
`structuredContent` = PaymentRequired `{x402Version: 2, error, resource: {url, description,
mimeType}, accepts: [{scheme, network, amount, asset, payTo, maxTimeoutSeconds, extra: {name,
version}}]}` and the same object as compact JSON in `content[0].text`. A retry whose
`_meta["x402/payment"]` is a PaymentPayload `{x402Version: 2, resource, accepted, payload:
{signature, authorization: {from, to, value, validAfter, validBefore, nonce}}}` that matches one of
the requirements is verified (accepted == requirement, to == payTo, value == amount, validAfter <=
now < validBefore, fresh nonce, hex signature), the tool runs, the payment is settled and recorded,
and the result carries `_meta["x402/payment-response"] = {success: true, transaction, network,
payer, amount}`. A payload that fails verification gets the PaymentRequired again, with `error`
naming the reason; nothing is settled.

Environment:
- FAKE_STATE: path of the JSON state file. Read at start and before every call (a test may edit it
  between calls), written atomically after every change. Without it the state lives in memory.
  (The state file, clock and stdio serving: tests/upstreams/_fake_state.py.)
- FAKE_NOW: the clock (epoch seconds or ISO-8601) when the state has no `now`.
- FAKE_X402_TEXT_WRAPPER=1: `content[0].text` uses the older spec's wrapper
  `{"x402/error": {"code": 402, "message", "data": PaymentRequired}}` instead of the bare object.

State file keys (optional; defaults are filled in and written back):
- `now`: the clock; overrides FAKE_NOW; null = real time.
- `network` ("eip155:84532"), `asset` (USDC on Base Sepolia), `pay_to`: the requirements.
- `prices`: {tool: "atomic amount"} overrides the amounts above; `upto_settle`: {tool: "amount"}.
- `balances`: {payer address (lower case): int}: payers listed here can run out of funds
  (settlement fails with `insufficient_funds`); payers not listed have unlimited funds.
- `outcomes`: {tool | nonce | "*": knob}: "failed" (settlement fails after verification: isError,
  no content, nothing paid), "crash" (settles and records the payment, then the process exits
  mid-call), "no_receipt" (settles, returns the content without `_meta`).
- `nonces`: nonces already settled (a replay fails verification).
- `payments` (append-only): {tool, amount (int, atomic units), unit: "usdc", nonce, transaction,
  payer, network, scheme, max_amount, at, reported}.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from typing import Any

import mcp.types as types
from mcp.server import ServerRequestContext
from mcp.shared.exceptions import MCPError

try:  # run as a script: this folder is sys.path[0]
    from _fake_state import FakeState, clock, iso, knobs_for, serve
except ImportError:  # imported as tests.upstreams.fake_x402
    from tests.upstreams._fake_state import FakeState, clock, iso, knobs_for, serve

JSON = dict[str, Any]
TEXT_WRAPPER = os.environ.get("FAKE_X402_TEXT_WRAPPER", "") not in ("", "0", "false")
PAYMENT_KEY = "x402/payment"
RESPONSE_KEY = "x402/payment-response"
USDC_BASE_SEPOLIA = "0x036CbD53842c5426634e7929541eC2318f3dCF7e"
HEX = re.compile(r"^0x[0-9a-fA-F]+$")
NONCE = re.compile(r"^0x[0-9a-fA-F]{64}$")

DEFAULTS: JSON = {
    "now": None,
    "network": "eip155:84532",
    "asset": USDC_BASE_SEPOLIA,
    "pay_to": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
    "prices": {},
    "upto_settle": {},
    "balances": {},
    "outcomes": {},
    "nonces": [],
    "payments": [],
}
# tool -> (scheme, default amount, description)
PRICED: dict[str, tuple[str, str, str]] = {
    "get_weather": ("exact", "10000", "Current weather for a city"),
    "summarize": ("upto", "50000", "Summarize a text; priced by length, up to a maximum"),
}

STATE = FakeState(DEFAULTS)


# --- requirements and results ------------------------------------------------------------------


def requirements(state: JSON, tool: str) -> list[JSON]:
    scheme, amount, _ = PRICED[tool]
    return [
        {
            "scheme": scheme,
            "network": state["network"],
            "amount": str(state["prices"].get(tool, amount)),
            "asset": state["asset"],
            "payTo": state["pay_to"],
            "maxTimeoutSeconds": 60,
            "extra": {"name": "USDC", "version": "2"},
        }
    ]


def payment_required(state: JSON, tool: str, error: str, settlement: JSON | None = None) -> types.CallToolResult:
    body: JSON = {
        "x402Version": 2,
        "error": error,
        "resource": {"url": f"mcp://tool/{tool}", "description": PRICED[tool][2], "mimeType": "application/json"},
        "accepts": requirements(state, tool),
    }
    if settlement is not None:
        body[RESPONSE_KEY] = settlement
    if TEXT_WRAPPER:
        text = json.dumps({"x402/error": {"code": 402, "message": error, "data": body}}, separators=(",", ":"))
    else:
        text = json.dumps(body, separators=(",", ":"))
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content=body,
        is_error=True,
        meta={RESPONSE_KEY: settlement} if settlement is not None else None,
    )


def verify(state: JSON, tool: str, payment: Any) -> tuple[JSON | None, str | None]:
    """(the matched requirement, None) or (None, reason)."""
    if not isinstance(payment, dict):
        return None, "invalid_payload: x402/payment must be an object"
    if payment.get("x402Version") != 2:
        return None, "invalid_x402_version"
    accepted = payment.get("accepted")
    match = next((r for r in requirements(state, tool) if accepted == r), None)
    if match is None:
        return None, "invalid_payment_requirements: accepted does not match what this tool accepts"
    inner = payment.get("payload")
    auth = inner.get("authorization") if isinstance(inner, dict) else None
    if not isinstance(auth, dict):
        return None, "invalid_payload: missing payload.authorization"
    signature = inner.get("signature") if isinstance(inner, dict) else None
    if not isinstance(signature, str) or not HEX.match(signature):
        return None, "invalid_exact_evm_payload_signature"
    if str(auth.get("to", "")).lower() != str(match["payTo"]).lower():
        return None, "invalid_exact_evm_payload_recipient_mismatch"
    if str(auth.get("value")) != match["amount"]:
        return None, "invalid_exact_evm_payload_authorization_value"
    now = clock(state)
    try:
        valid_after, valid_before = int(auth.get("validAfter", 0)), int(auth.get("validBefore", 0))
    except (TypeError, ValueError):
        return None, "invalid_payload: validAfter/validBefore must be integers"
    if valid_after > now:
        return None, "invalid_exact_evm_payload_authorization_valid_after"
    if valid_before <= now:
        return None, "invalid_exact_evm_payload_authorization_valid_before"
    nonce = auth.get("nonce")
    if not isinstance(nonce, str) or not NONCE.match(nonce):
        return None, "invalid_payload: nonce must be 32 bytes of hex"
    if nonce.lower() in state["nonces"]:
        return None, "invalid_transaction_state: nonce already used"
    if not isinstance(auth.get("from"), str) or not HEX.match(auth["from"]):
        return None, "invalid_payload: from must be an address"
    return match, None


def settled_amount(state: JSON, tool: str, requirement: JSON, arguments: JSON) -> int:
    maximum = int(requirement["amount"])
    if requirement["scheme"] != "upto":
        return maximum
    if tool in state["upto_settle"]:
        return min(maximum, int(state["upto_settle"][tool]))
    words = len(str(arguments.get("text", "")).split())
    return min(maximum, 2000 + 200 * words)


def run_tool(tool: str, arguments: JSON) -> list[types.TextContent]:
    if tool == "get_weather":
        city = str(arguments.get("city", "nowhere"))
        report = {"city": city, "forecast": "sunny", "temperature_c": 21}
        return [types.TextContent(type="text", text=json.dumps(report))]
    if tool == "summarize":
        words = str(arguments.get("text", "")).split()
        return [types.TextContent(type="text", text=f"Summary ({len(words)} words): {' '.join(words[:8])}")]
    return [types.TextContent(type="text", text="pong")]


# --- tools -------------------------------------------------------------------------------------

TOOLS = [
    types.Tool(
        name="get_weather",
        description="Current weather for a city. Paid: 0.01 USDC per call (x402, exact).",
        input_schema={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    ),
    types.Tool(
        name="summarize",
        description="Summarize a text. Paid: up to 0.05 USDC, settled by length (x402, upto).",
        input_schema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
    ),
    types.Tool(name="ping", description="Free.", input_schema={"type": "object", "properties": {}}),
]


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    tool = params.name
    if tool not in {t.name for t in TOOLS}:
        raise MCPError(types.INVALID_PARAMS, f"Tool {tool} not found")
    arguments = dict(params.arguments or {})
    if tool not in PRICED:
        return types.CallToolResult(content=run_tool(tool, arguments))
    state = STATE.load()
    meta = dict(params.meta or {})
    payment = meta.get(PAYMENT_KEY)
    if payment is None:
        return payment_required(state, tool, "Payment required to access this resource")
    requirement, reason = verify(state, tool, payment)
    if requirement is None:
        return payment_required(state, tool, f"Payment verification failed: {reason}")
    auth = payment["payload"]["authorization"]
    payer = str(auth["from"])
    nonce = str(auth["nonce"]).lower()
    knobs = knobs_for(state, tool, nonce)
    amount = settled_amount(state, tool, requirement, arguments)
    content = run_tool(tool, arguments)
    balance = state["balances"].get(payer.lower())
    if "failed" in knobs or (balance is not None and int(balance) < amount):
        settlement = {
            "success": False,
            "errorReason": "insufficient_funds",
            "transaction": "",
            "network": requirement["network"],
            "payer": payer,
        }
        return payment_required(state, tool, "Settlement failed", settlement)
    if balance is not None:
        state["balances"][payer.lower()] = int(balance) - amount
    transaction = "0x" + hashlib.sha256(f"{nonce}:{tool}:{amount}".encode()).hexdigest()
    reported = "crash" if "crash" in knobs else "no_receipt" if "no_receipt" in knobs else "paid"
    state["nonces"].append(nonce)
    state["payments"].append(
        {
            "tool": tool,
            "amount": amount,
            "unit": "usdc",
            "nonce": nonce,
            "transaction": transaction,
            "payer": payer,
            "network": requirement["network"],
            "scheme": requirement["scheme"],
            "max_amount": int(requirement["amount"]),
            "at": iso(clock(state)),
            "reported": reported,
        }
    )
    STATE.save(state)
    if reported == "crash":
        sys.stderr.write("fake_x402: settled, now dying before answering\n")
        sys.stderr.flush()
        os._exit(9)
    if reported == "no_receipt":
        return types.CallToolResult(content=content)
    receipt = {
        "success": True,
        "transaction": transaction,
        "network": requirement["network"],
        "payer": payer,
        "amount": str(amount),
    }
    return types.CallToolResult(content=content, meta={RESPONSE_KEY: receipt})


if __name__ == "__main__":
    serve("x402-fake", "1.0.0", TOOLS, call_tool, STATE)
