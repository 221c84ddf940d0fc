"""A fake Alby MCP server (NWC wallet): a real MCP server over stdio; the wallet is simulated.

Run: `python tests/upstreams/fake_alby.py`, or behind the guard: `guard run -- python tests/upstreams/fake_alby.py`.

Tools (shapes of getAlby/mcp; results are pretty-printed JSON text, failures are the wallet's error
message as text with isError, as the TypeScript SDK reports a thrown error):
- `pay_invoice {invoice, amount_in_sats?}` -> `{preimage, fees_paid_in_sats}`. The amount is not
  echoed: it is the BOLT11 invoice's; `amount_in_sats` is for amountless invoices only.
- `fetch_l402 {url, method?, body?}`: fetches a URL of the simulated paid web and pays its L402
  invoice silently: the text is the response body, `structuredContent` `{content, status}`; no
  amount is reported anywhere.
- `get_balance {}` -> `{amount_in_sats}` (FAKE_OLD_BALANCE=1: the older `{balance}` in msat).

Environment:
- FAKE_STATE: path of the JSON state file. Read at start and before every call (a test may edit it
  between calls), written atomically after every change. Without it the state lives in memory.
  (The state file, clock and stdio serving: tests/upstreams/_fake_state.py.)
- FAKE_OLD_BALANCE=1: get_balance answers `{"balance": <msat>}`.
- FAKE_NOW: the clock (epoch seconds or ISO-8601) when the state has no `now`.

State file keys (optional; defaults are filled in and written back):
- `now`: the clock; overrides FAKE_NOW; null = real time.
- `wallet_sats` (100000): the balance; `fee_sats` (0): routing fee per payment (taken from the
  wallet, reported as `fees_paid_in_sats`).
- `prices`: {url: sats}: URLs behind L402 (fetch_l402 pays a fresh invoice for them); others are
  free. `bodies`: {url: text}.
- `l402_cache` (false): true = fetch_l402 keeps the paid token per URL and reuses it (older
  lightning-tools kept a memory store); false = every fetch pays again (current behaviour).
- `outcomes`: {invoice payment hash | url | "*": knob}: "failed" (the wallet refuses, nothing
  moves), "unknown" (the payment is made and recorded, the tool answers `reply timeout`, isError).
- `payments` (append-only): {tool, amount, unit: "sat", payment_hash, at, fee_sats, url, reported}.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from typing import Any

import bolt11
import mcp.types as types
from mcp.shared.exceptions import MCPError

try:  # run as a script: this folder is sys.path[0]
    from _fake_state import FakeState, clock, dispatch, iso, knobs_for, serve
except ImportError:  # imported as tests.upstreams.fake_alby
    from tests.upstreams._fake_state import FakeState, clock, dispatch, iso, knobs_for, serve

JSON = dict[str, Any]
OLD_BALANCE = os.environ.get("FAKE_OLD_BALANCE", "") not in ("", "0", "false")
NODE_KEY = "22" * 32  # a throwaway key that signs the simulated servers' invoices

DEFAULTS: JSON = {
    "now": None,
    "wallet_sats": 100_000,
    "fee_sats": 0,
    "prices": {},
    "bodies": {},
    "l402_cache": False,
    "l402_tokens": {},
    "outcomes": {},
    "preimages": {},
    "payments": [],
}

STATE = FakeState(DEFAULTS)


def make_invoice(state: JSON, sats: int, description: str) -> tuple[str, str]:
    """A real BOLT11 invoice from a simulated paid server; its preimage is kept for the payer."""
    preimage = secrets.token_bytes(32)
    payment_hash = hashlib.sha256(preimage).hexdigest()
    tags = bolt11.Tags()
    tags.add(bolt11.TagChar.payment_hash, payment_hash)
    tags.add(bolt11.TagChar.payment_secret, secrets.token_hex(32))
    tags.add(bolt11.TagChar.description, description)
    invoice = bolt11.Bolt11(
        currency="bc", date=int(clock(state)), tags=tags, amount_msat=bolt11.MilliSatoshi(sats * 1000)
    )
    state["preimages"][payment_hash] = preimage.hex()
    return bolt11.encode(invoice, private_key=NODE_KEY), payment_hash


class WalletError(Exception):
    pass


def wallet_pay(state: JSON, *, tool: str, invoice: str, amount_in_sats: Any, url: str | None) -> tuple[str, int]:
    """Pay `invoice` from the simulated wallet: (preimage, fee in sats); WalletError when it fails."""
    try:
        decoded = bolt11.decode(invoice)
    except Exception as exc:
        raise WalletError(f"Failed to decode invoice: {exc}") from exc
    payment_hash = decoded.payment_hash
    if decoded.amount_msat:
        sats = int(decoded.amount_msat) // 1000
        if amount_in_sats is not None and int(amount_in_sats) != sats:
            raise WalletError("amount_in_sats must not differ from the amount of an invoice that has one")
    elif amount_in_sats is None:
        raise WalletError("amount_in_sats is required to pay an invoice without an amount")
    else:
        sats = int(amount_in_sats)
    knobs = knobs_for(state, payment_hash, url)
    fee = int(state.get("fee_sats") or 0)
    if any(p.get("payment_hash") == payment_hash for p in state["payments"]):
        raise WalletError("Failed to pay invoice: invoice is already paid")
    if "failed" in knobs:
        raise WalletError("Failed to pay invoice: no route found")
    if int(state["wallet_sats"]) < sats + fee:
        raise WalletError("Failed to pay invoice: insufficient balance")
    state["wallet_sats"] = int(state["wallet_sats"]) - sats - fee
    reported = "unknown" if "unknown" in knobs else "paid"
    state["payments"].append(
        {
            "tool": tool,
            "amount": sats,
            "unit": "sat",
            "payment_hash": payment_hash,
            "at": iso(clock(state)),
            "fee_sats": fee,
            "url": url,
            "reported": reported,
        }
    )
    if reported == "unknown":
        raise WalletError(f"reply timeout: event {secrets.token_hex(32)}")
    preimage = state["preimages"].get(payment_hash) or secrets.token_hex(32)
    return preimage, fee


def text(value: str, *, error: bool = False, structured: JSON | None = None) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=value)], is_error=error, structured_content=structured
    )


def tool_pay_invoice(state: JSON, args: JSON) -> types.CallToolResult:
    invoice = args.get("invoice")
    if not isinstance(invoice, str) or not invoice:
        raise MCPError(types.INVALID_PARAMS, "Input validation error: invoice is required")
    try:
        preimage, fee = wallet_pay(
            state, tool="pay_invoice", invoice=invoice, amount_in_sats=args.get("amount_in_sats"), url=None
        )
    except WalletError as exc:
        return text(str(exc), error=True)
    return text(json.dumps({"preimage": preimage, "fees_paid_in_sats": fee}, indent=2))


def tool_fetch_l402(state: JSON, args: JSON) -> types.CallToolResult:
    url = args.get("url")
    if not isinstance(url, str) or not url:
        raise MCPError(types.INVALID_PARAMS, "Input validation error: url is required")
    body = state["bodies"].get(url) or json.dumps({"url": url, "data": f"the resource at {url}"})
    price = state["prices"].get(url)
    if price is not None and not (state.get("l402_cache") and url in state["l402_tokens"]):
        invoice, payment_hash = make_invoice(state, int(price), f"L402 access to {url}")
        try:
            preimage, _ = wallet_pay(state, tool="fetch_l402", invoice=invoice, amount_in_sats=None, url=url)
        except WalletError as exc:
            return text(str(exc), error=True)
        if state.get("l402_cache"):
            state["l402_tokens"][url] = f"{payment_hash}:{preimage}"
    return text(body, structured={"content": body, "status": 200})


def tool_get_balance(state: JSON, args: JSON) -> types.CallToolResult:
    sats = int(state["wallet_sats"])
    if OLD_BALANCE:
        return text(json.dumps({"balance": sats * 1000}, indent=2))
    value = {"amount_in_sats": sats}
    return text(json.dumps(value, indent=2), structured=value)


TOOLS = [
    types.Tool(
        name="pay_invoice",
        title="Pay Invoice",
        description="Pay a lightning invoice",
        input_schema={
            "type": "object",
            "properties": {
                "invoice": {"type": "string", "description": "The lightning invoice to pay"},
                "amount_in_sats": {
                    "type": ["number", "null"],
                    "description": "Optional amount in sats to pay a zero-amount invoice",
                },
            },
            "required": ["invoice"],
        },
    ),
    types.Tool(
        name="fetch_l402",
        title="Fetch L402",
        description="Fetch a paid resource protected by L402",
        input_schema={
            "type": "object",
            "properties": {
                "url": {"type": "string", "description": "the URL to fetch"},
                "method": {"type": ["string", "null"], "description": "HTTP request method. Default GET"},
                "body": {"type": ["string", "null"], "description": "HTTP request body as a string"},
            },
            "required": ["url"],
        },
        output_schema={
            "type": "object",
            "properties": {"content": {"type": "string"}, "status": {"type": "number"}},
            "required": ["content", "status"],
        },
    ),
    types.Tool(
        name="get_balance",
        title="Get Balance",
        description="Get the balance of the connected lightning wallet",
        input_schema={"type": "object", "properties": {}},
        output_schema=None
        if OLD_BALANCE
        else {
            "type": "object",
            "properties": {"amount_in_sats": {"type": "number"}},
            "required": ["amount_in_sats"],
        },
    ),
]
HANDLERS = {"pay_invoice": tool_pay_invoice, "fetch_l402": tool_fetch_l402, "get_balance": tool_get_balance}


if __name__ == "__main__":
    serve("@getalby/mcp", "1.0.0", TOOLS, dispatch(STATE, HANDLERS), STATE)
