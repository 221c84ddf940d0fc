"""A fake MCP server with x402-priced tools (x402 v2, tool-result binding of spec transports-v2/mcp).

Run: `python tests/upstreams/fake_x402.py`, or behind the guard: `guard run -- python tests/upstreams/fake_x402.py`.
A real MCP server over stdio; only the money (verification and settlement on chain) is simulated.

Tools:
- `get_weather {city}`: scheme `exact`, amount "10000" (0.01 USDC, 6 decimals).
- `summarize {text}`: scheme `upto`, amount "50000" is the maximum; the settled amount is lower:
  2000 + 200 per word of `text`, capped at the maximum (or state `upto_settle[tool]`).
- `ping {}`: free.

Every answer is shaped as the official x402 SDK's MCP wrapper (x402 2.25.0, `create_payment_wrapper`;
tests/x402/ runs the real one) writes it. A call without `params._meta["x402/payment"]` returns
`isError: true` with `structuredContent` = PaymentRequired `{x402Version: 2, accepts: [{scheme,
network, asset, amount, payTo, maxTimeoutSeconds: 300, extra: {name, version}}], error: "Payment
Required", resource: {url: "mcp://tool/<name>", description: "Tool: <name>", mimeType}}` and the same
object in `content[0].text` as `json.dumps` writes it (", " and ": "). A retry whose
`_meta["x402/payment"]` is a PaymentPayload `{x402Version: 2, resource, accepted, payload:
{signature, authorization: {from, to, value, validAfter, validBefore, nonce}}}` that matches one of
the requirements is verified (accepted == requirement, to == payTo, value == amount, validAfter <=
now < validBefore, fresh nonce, hex signature, the payer's balance), the tool runs, the payment is
settled and recorded, and the result carries `_meta["x402/payment-response"] = {success: true, payer,
transaction, network}`: like the SDK's `exact` scheme, no `amount` (an `upto` receipt names the settled
`amount`, as the SDK's upto scheme does). A payload that fails verification gets the PaymentRequired
again, its `error` the SDK's bare reason (`invalid_exact_evm_nonce_already_used`,
`invalid_exact_evm_insufficient_balance`, `No matching payment requirements found`, …); nothing is
settled. A failed settlement is the PaymentRequired with `error: "Payment settlement failed: <reason>"`
and `"x402/payment-response": {success: false, errorReason, transaction: "", network}` inside
`structuredContent` only (no `_meta`).

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
  (verification refuses `invalid_exact_evm_insufficient_balance`, as the SDK's facilitator does);
  payers not listed have unlimited funds.
- `outcomes`: {tool | nonce | "*": knob}: "failed" (the transaction reverts after the tool ran:
  settlement fails with the SDK's `transaction_failed`, no content, nothing paid), "pending" (the transfer
  lands but its receipt is lost: the SDK's `settlement_pending`, recorded as paid), "tool_fails" (the tool
  raises after verification: the SDK's `Tool execution error: …`, nothing settled), "crash" (settles and
  records the payment, then the process exits mid-call), "no_receipt" (settles, returns the content
  without `_meta`).
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
            "asset": state["asset"],
            "amount": str(state["prices"].get(tool, amount)),
            "payTo": state["pay_to"],
            "maxTimeoutSeconds": 300,
            "extra": {"name": "USDC", "version": "2"},
        }
    ]


def payment_required(state: JSON, tool: str, error: str, settlement: JSON | None = None) -> types.CallToolResult:
    """The SDK's PaymentRequired (`_create_payment_required_result`), or with `settlement` its failed
    settlement (`_create_settlement_failed_result`): the receipt in `structuredContent` only."""
    body: JSON = {
        "x402Version": 2,
        "accepts": requirements(state, tool),
        "error": error,
        "resource": {"url": f"mcp://tool/{tool}", "description": f"Tool: {tool}", "mimeType": "application/json"},
    }
    if settlement is not None:
        body[RESPONSE_KEY] = settlement
    if TEXT_WRAPPER:
        text = json.dumps({"x402/error": {"code": 402, "message": error, "data": body}})
    else:
        text = json.dumps(body)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structured_content=body, is_error=True
    )


def verify(state: JSON, tool: str, payment: Any) -> tuple[JSON | None, str | None]:
    """(the matched requirement, None) or (None, the SDK's words for why not)."""
    if not isinstance(payment, dict):
        return None, "Invalid payment payload: x402/payment must be an object"
    if payment.get("x402Version") != 2:
        return None, "invalid_x402_version"
    accepted = payment.get("accepted")
    match = next((r for r in requirements(state, tool) if accepted == r), None)
    if match is None:
        return None, "No matching payment requirements found"
    inner = payment.get("payload")
    auth = inner.get("authorization") if isinstance(inner, dict) else None
    if not isinstance(auth, dict):
        return None, "Invalid payment payload: missing payload.authorization"
    signature = inner.get("signature") if isinstance(inner, dict) else None
    if not isinstance(signature, str) or not HEX.match(signature):
        return None, "invalid_exact_evm_payload_signature"
    if str(auth.get("to", "")).lower() != str(match["payTo"]).lower():
        return None, "invalid_exact_evm_payload_recipient_mismatch"
    if str(auth.get("value")) != match["amount"]:
        return None, "invalid_exact_evm_payload_authorization_value_mismatch"
    now = clock(state)
    try:
        valid_after, valid_before = int(auth.get("validAfter", 0)), int(auth.get("validBefore", 0))
    except (TypeError, ValueError):
        return None, "Invalid payment payload: validAfter/validBefore must be integers"
    if valid_after > now:
        return None, "invalid_exact_evm_payload_authorization_valid_after"
    if valid_before <= now:
        return None, "invalid_exact_evm_payload_authorization_valid_before"
    nonce = auth.get("nonce")
    if not isinstance(nonce, str) or not NONCE.match(nonce):
        return None, "Invalid payment payload: nonce must be 32 bytes of hex"
    if nonce.lower() in state["nonces"]:
        return None, "invalid_exact_evm_nonce_already_used"
    if not isinstance(auth.get("from"), str) or not HEX.match(auth["from"]):
        return None, "Invalid payment payload: from must be an address"
    balance = state["balances"].get(auth["from"].lower())
    if balance is not None and int(balance) < int(match["amount"]):
        return None, "invalid_exact_evm_insufficient_balance"  # the SDK's facilitator checks it before settling
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
        return payment_required(state, tool, "Payment Required")
    requirement, reason = verify(state, tool, payment)
    if requirement is None:
        return payment_required(state, tool, reason or "Payment verification failed")
    auth = payment["payload"]["authorization"]
    payer = str(auth["from"])
    nonce = str(auth["nonce"]).lower()
    knobs = knobs_for(state, tool, nonce)
    amount = settled_amount(state, tool, requirement, arguments)
    if "tool_fails" in knobs:  # the SDK's wrapper: the handler raised; it does not settle
        failure = types.TextContent(type="text", text="Tool execution error: the tool failed")
        return types.CallToolResult(content=[failure], is_error=True)
    content = run_tool(tool, arguments)
    if "failed" in knobs:  # the transaction reverted: nothing moved
        return payment_required(
            state, tool, "Payment settlement failed: transaction_failed", failed("transaction_failed", requirement)
        )
    balance = state["balances"].get(payer.lower())
    if balance is not None:
        state["balances"][payer.lower()] = int(balance) - amount
    transaction = "0x" + hashlib.sha256(f"{nonce}:{tool}:{amount}".encode()).hexdigest()
    reported = next((k for k in ("crash", "no_receipt", "pending") if k in knobs), "paid")
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
    if reported == "pending":  # broadcast, receipt lost: the SDK's non-terminal failure
        return payment_required(
            state, tool, "Payment settlement failed: settlement_pending", failed("settlement_pending", requirement)
        )
    # The SDK's receipt: `SettleResponse` dumped without its None fields; `exact` names no amount.
    receipt: JSON = {"success": True, "payer": payer, "transaction": transaction, "network": requirement["network"]}
    if requirement["scheme"] == "upto":
        receipt["amount"] = str(amount)
    return types.CallToolResult(content=content, meta={RESPONSE_KEY: receipt})


def failed(reason: str, requirement: JSON) -> JSON:
    """A failed settlement's receipt, as the SDK's wrapper writes it (no payer; `transaction` empty)."""
    return {"success": False, "errorReason": reason, "transaction": "", "network": requirement["network"]}


if __name__ == "__main__":
    serve("x402-fake", "1.0.0", TOOLS, call_tool, STATE)
