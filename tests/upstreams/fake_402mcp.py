"""A fake 402-mcp (v4.2.1 shapes): a real MCP server over stdio; only the money is simulated.

Run: `python tests/upstreams/fake_402mcp.py`, or behind the guard: `guard run -- python tests/upstreams/fake_402mcp.py`.

Tools (kebab-case; FAKE_SNAKE_CASE=1 serves the pre-3.14 snake_case names instead): l402-config,
l402-discover, l402-fetch-preview, l402-fetch, l402-pay, l402-buy-credits, l402-redeem-cashu,
l402-credentials, l402-balance, l402-search, l402-store-token. Every result is one text content item
holding JSON: pretty-printed (indent 2) for results, compact for `{"error": ...}` objects, as the
real server does. Invoices are real BOLT11 strings (mainnet `lnbc`, signed with a throwaway key);
each payment hash is sha256 of a random preimage.

Environment:
- FAKE_STATE: path of the JSON state file. Read at start and again before every call (so a test
  may edit it between calls, e.g. to move the clock), written atomically after every change.
  Without it the state lives in memory only.
  (The state file, clock and stdio serving: tests/upstreams/_fake_state.py.)
- FAKE_SNAKE_CASE=1: expose `l402_fetch`, `l402_balance`, ... instead of the kebab-case names.
- MAX_AUTO_PAY_SATS (default 1000): the most one automatic payment may cost.
- MAX_SPEND_PER_MINUTE_SATS (default 10000): rolling-minute cap; kept in memory, reset on restart.
- FAKE_NOW: the clock (epoch seconds or ISO-8601) when the state has no `now`.

State file keys (all optional; defaults are filled in and written back):
- `now`: the clock (epoch seconds or ISO-8601); overrides FAKE_NOW; null = real time.
- `wallet_sats` (100000): the NWC wallet; `cashu_balance_sats` (0); `nwc_configured` (true);
  `cashu_configured` (false); `routing_fee_sats` (0): taken from the wallet on each Lightning
  payment on top of the price (never reported in `satsPaid`).
- `prices`: {url: costSats}: URLs listed answer 402 with a fresh invoice; others are free (200).
- `x402`: {url: {receiver, network, asset, amountUsd}}: URLs behind x402 (never auto-paid; a call
  with `txHash` gets the resource; nothing is recorded as paid by the fake's wallet).
- `credits`: {origin: int|null}: the paid server's own credit balance for the credential the
  client holds (null = unmetered access). An origin absent here rejects any credential.
- `grant_credits`: {origin: int}: credits a server grants for an L402 payment (absent = unmetered).
- `credit_costs`: {url: int} (default 1): credits each authorised fetch consumes.
- `credit_tiers`: {origin: [{amountSats, creditSats, label}]}: marks a toll-booth server; used by
  l402-buy-credits / l402-discover; a bought tier grants its creditSats (else amountSats).
- `credentials`: {origin: {origin, macaroon, preimage, paymentHash, creditBalance, storedAt,
  lastUsed, server}}: the client's local credential cache (what l402-balance/-credentials read).
- `challenges`: {paymentHash: {url, invoice, macaroon, preimage, costSats, expiresAt}}: cached 402s.
- `outcomes`: {url | origin | paymentHash | "*": knob or [knobs]}: scenario knobs:
  "unknown" (the payment is made and recorded, the tool reports paymentState unknown + isError),
  "failed" (the payment fails, nothing moves), "malformed" (the result text is cut-off JSON; the
  payment, if any, is made), "strings" (every number in the result is sent as a string).
- `services`: the l402-search catalogue.
- `bodies`: {url: text}: response bodies.
- `delays`: {url: seconds}: a slow wallet: a call on that URL first writes `fake_402mcp: <tool> waits <s> s`
  to stderr, then waits that long (cancellable) before it runs (and pays).
- `payments` (append-only): {tool, amount, unit: "sat", payment_hash, at, fee_sats, method, url,
  reported} for every payment that left the wallet (`reported` = what the tool told the client).
- `attempts` (append-only): every payment attempt, including refused/failed ones.
- `spent_tokens`: Cashu tokens already redeemed (a second redemption fails).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import sys
from typing import Any
from urllib.parse import urlsplit

import anyio
import bolt11
import mcp.types as types
from mcp.server import ServerRequestContext
from mcp.shared.exceptions import MCPError

try:  # run as a script: this folder is sys.path[0]
    from _fake_state import FakeState, clock, iso, knobs_for, parse_time, serve
except ImportError:  # imported as tests.upstreams.fake_402mcp
    from tests.upstreams._fake_state import FakeState, clock, iso, knobs_for, parse_time, serve

JSON = dict[str, Any]

MAX_AUTO_PAY_SATS = int(os.environ.get("MAX_AUTO_PAY_SATS", "1000"))
MAX_SPEND_PER_MINUTE_SATS = int(os.environ.get("MAX_SPEND_PER_MINUTE_SATS", "10000"))
SNAKE = os.environ.get("FAKE_SNAKE_CASE", "") not in ("", "0", "false")
STALE_AFTER_S = 300
INVOICE_EXPIRY_S = 3600
# A throwaway node key: signs the fake invoices (payee pubkey is derived from it).
NODE_KEY = "11" * 32
RECONCILE_HINT = "Call l402-reconcile with this paymentHash before paying this service again."

DEFAULTS: JSON = {
    "now": None,
    "wallet_sats": 100_000,
    "cashu_balance_sats": 0,
    "nwc_configured": True,
    "cashu_configured": False,
    "routing_fee_sats": 0,
    "prices": {},
    "x402": {},
    "credits": {},
    "grant_credits": {},
    "credit_costs": {},
    "credit_tiers": {},
    "credentials": {},
    "challenges": {},
    "outcomes": {},
    "bodies": {},
    "delays": {},
    "services": [
        {
            "name": "Fake Weather",
            "urls": ["https://weather.example/forecast"],
            "about": "Forecasts for agents, paid per call",
            "pubkey": "a" * 64,
            "paymentMethods": ["l402"],
            "pricing": [{"capability": "forecast", "amount": "10", "unit": "sats"}],
            "topics": ["weather", "data"],
            "capabilities": [{"name": "forecast", "description": "Seven-day forecast for a city"}],
        },
        {
            "name": "Fake LLM",
            "urls": ["https://llm.example/v1/chat"],
            "about": "Chat completions behind a toll booth",
            "pubkey": "b" * 64,
            "paymentMethods": ["l402", "cashu"],
            "pricing": [{"capability": "chat", "amount": "21", "unit": "sats"}],
            "topics": ["ai"],
            "capabilities": [{"name": "chat", "description": "Answer a prompt"}],
        },
    ],
    "payments": [],
    "attempts": [],
    "spent_tokens": [],
}

# --- state -------------------------------------------------------------------------------------

STATE = FakeState(DEFAULTS)


# --- the simulated paid web and wallet ---------------------------------------------------------


def origin_of(url: str) -> str:
    """`new URL(url).origin`: scheme://host[:port], default ports dropped."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        raise ValueError(f"Invalid URL: {url}")
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    port = parts.port
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def make_invoice(sats: int, description: str, now: float) -> tuple[str, str, str]:
    """A real, signed BOLT11 invoice for `sats`: (invoice, payment hash hex, preimage hex)."""
    preimage = secrets.token_bytes(32)
    payment_hash = hashlib.sha256(preimage).hexdigest()
    tags = bolt11.Tags()
    tags.add(bolt11.TagChar.payment_hash, payment_hash)
    tags.add(bolt11.TagChar.payment_secret, secrets.token_hex(32))
    tags.add(bolt11.TagChar.description, description)
    invoice = bolt11.Bolt11(
        currency="bc", date=int(now), tags=tags, amount_msat=bolt11.MilliSatoshi(sats * 1000) if sats else None
    )
    return bolt11.encode(invoice, private_key=NODE_KEY), payment_hash, preimage.hex()


def make_macaroon(origin: str, payment_hash: str) -> str:
    """Base64 text in the shape toll-booth macaroons carry (`payment_hash = <hex>`)."""
    text = f"fake-macaroon v1\nlocation = {origin}\npayment_hash = {payment_hash}\n"
    return base64.b64encode(text.encode()).decode()


def decode_invoice(invoice: str) -> tuple[int | None, str | None]:
    """(cost in whole sats or None when amountless/undecodable, payment hash)."""
    try:
        decoded = bolt11.decode(invoice)
    except Exception:
        return None, None
    cost = int(decoded.amount_msat) // 1000 if decoded.amount_msat else None
    return cost, decoded.payment_hash


def new_challenge(state: JSON, url: str, sats: int) -> JSON:
    now = clock(state)
    invoice, payment_hash, preimage = make_invoice(sats, f"L402 access to {url}", now)
    challenge = {
        "url": url,
        "invoice": invoice,
        "macaroon": make_macaroon(origin_of(url), payment_hash),
        "paymentHash": payment_hash,
        "preimage": preimage,
        "costSats": sats,
        "expiresAt": int((now + INVOICE_EXPIRY_S) * 1000),
    }
    state["challenges"][payment_hash] = challenge
    return challenge


class SpendTracker:
    """MAX_SPEND_PER_MINUTE_SATS over a rolling minute, in memory like the real one."""

    def __init__(self) -> None:
        self.entries: list[tuple[float, int]] = []

    def try_record(self, sats: int, now: float) -> bool:
        self.entries = [(t, s) for t, s in self.entries if t > now - 60]
        if sum(s for _, s in self.entries) + sats > MAX_SPEND_PER_MINUTE_SATS:
            return False
        self.entries.append((now, sats))
        return True

    def unrecord(self, sats: int) -> None:
        for i in range(len(self.entries) - 1, -1, -1):
            if self.entries[i][1] == sats:
                del self.entries[i]
                return


tracker = SpendTracker()


def default_method(state: JSON) -> str:
    if state["nwc_configured"]:
        return "nwc"
    if state["cashu_configured"]:
        return "cashu"
    return "human"


def pay(
    state: JSON, *, tool: str, sats: int, payment_hash: str, method: str, knobs: set[str], url: str | None
) -> tuple[str, str | None]:
    """The simulated wallet pays `sats`. Returns ("paid" | "unknown" | "failed", reason).

    "unknown" means the money did leave (recorded) but the caller is told the outcome is unknown.
    A hash that was already paid is refused, as a Lightning node refuses a paid invoice."""
    attempt = {"tool": tool, "amount": sats, "unit": "sat", "payment_hash": payment_hash, "at": iso(clock(state))}
    paid_hashes = {p.get("payment_hash") for p in state["payments"]}
    fee = int(state.get("routing_fee_sats") or 0)
    purse = "cashu_balance_sats" if method == "cashu" else "wallet_sats"
    reason: str | None = None
    if payment_hash in paid_hashes:
        reason = "invoice already paid"
    elif "failed" in knobs:
        reason = "simulated routing failure: no route found"
    elif int(state[purse]) < sats + fee:
        reason = "insufficient balance"
    if reason is not None:
        state["attempts"].append({**attempt, "result": "failed", "reason": reason})
        return "failed", reason
    state[purse] = int(state[purse]) - sats - fee
    reported = "unknown" if "unknown" in knobs else "paid"
    record = {**attempt, "fee_sats": fee, "method": method, "url": url, "reported": reported}
    state["payments"].append(record)
    state["attempts"].append({**attempt, "result": reported})
    return reported, None


def store_credential(
    state: JSON, origin: str, macaroon: str, preimage: str, payment_hash: str, server: str | None
) -> None:
    now = iso(clock(state))
    state["credentials"][origin] = {
        "origin": origin,
        "macaroon": macaroon,
        "preimage": preimage,
        "paymentHash": payment_hash,
        "creditBalance": None,
        "storedAt": now,
        "lastUsed": now,
        "server": server,
    }


def server_kind(state: JSON, origin: str) -> str | None:
    return "toll-booth" if origin in state["credit_tiers"] else None


# --- results -----------------------------------------------------------------------------------


def stringify_numbers(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict):
        return {k: stringify_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [stringify_numbers(v) for v in value]
    return value


def result(
    obj: Any, *, error: bool = False, knobs: set[str] | frozenset[str] = frozenset(), compact: bool = False
) -> types.CallToolResult:
    if "strings" in knobs:
        obj = stringify_numbers(obj)
    text = json.dumps(obj) if compact else json.dumps(obj, indent=2)
    if "malformed" in knobs:
        text = text[: max(1, len(text) // 2)]
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=error)


def failure(obj: JSON) -> types.CallToolResult:
    return result(obj, error=True, compact=True)


# --- tools -------------------------------------------------------------------------------------

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
URL = {"type": "string", "format": "uri"}
HEADERS = {"type": "object", "additionalProperties": {"type": "string", "maxLength": 8000}}
READ_ONLY = types.ToolAnnotations(read_only_hint=True)
READ_ONLY_OPEN = types.ToolAnnotations(read_only_hint=True, open_world_hint=True)
SPENDS = types.ToolAnnotations(destructive_hint=True, open_world_hint=True)


def schema(properties: JSON, required: list[str] | None = None) -> JSON:
    out: JSON = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    return out


TOOL_SPECS: list[tuple[str, str, JSON, types.ToolAnnotations | None]] = [
    ("l402-config", "Introspect the MCP's payment capabilities.", schema({}), READ_ONLY),
    (
        "l402-discover",
        "Probe an endpoint to discover its L402 pricing without committing to payment.",
        schema({"url": URL, "method": {"type": "string", "enum": METHODS, "default": "GET"}}, ["url"]),
        READ_ONLY_OPEN,
    ),
    (
        "l402-fetch-preview",
        "Preview payment requirements for a URL without spending any sats.",
        schema(
            {
                "url": URL,
                "urls": {"type": "array", "items": URL, "maxItems": 10},
                "method": {"type": "string", "enum": METHODS, "default": "GET"},
                "headers": HEADERS,
                "pubkey": {"type": "string", "maxLength": 128},
            },
            ["url"],
        ),
        READ_ONLY_OPEN,
    ),
    (
        "l402-fetch",
        "Fetch a URL with automatic payment handling (L402 Lightning + x402 on-chain).",
        schema(
            {
                "url": URL,
                "urls": {"type": "array", "items": URL, "maxItems": 10},
                "method": {"type": "string", "enum": METHODS, "default": "GET"},
                "headers": HEADERS,
                "body": {"type": "string", "maxLength": 1_000_000},
                "autoPay": {"type": "boolean", "default": False},
                "pubkey": {"type": "string", "maxLength": 128},
                "txHash": {"type": "string", "pattern": "^0x[0-9a-fA-F]{64}$"},
            },
            ["url"],
        ),
        SPENDS,
    ),
    (
        "l402-pay",
        "Pay an invoice and store the credential.",
        schema(
            {
                "invoice": {"type": "string", "maxLength": 20000},
                "macaroon": {"type": "string", "maxLength": 10000},
                "paymentHash": {"type": "string", "maxLength": 128},
                "method": {"type": "string", "enum": ["nwc", "cashu", "lnurlcash", "human"]},
            }
        ),
        SPENDS,
    ),
    (
        "l402-buy-credits",
        "Buy credits from a toll-booth server. Omit amountSats to discover available tiers.",
        schema(
            {
                "url": URL,
                "amountSats": {"type": "integer", "exclusiveMinimum": 0},
                "method": {"type": "string", "enum": ["nwc", "cashu", "human"]},
            },
            ["url"],
        ),
        SPENDS,
    ),
    (
        "l402-redeem-cashu",
        "Redeem Cashu ecash tokens directly on a toll-booth server.",
        schema({"url": URL, "token": {"type": "string", "maxLength": 20000}}, ["url", "token"]),
        SPENDS,
    ),
    ("l402-credentials", "List all stored L402 credentials.", schema({}), READ_ONLY),
    (
        "l402-balance",
        "Check cached credit balance for a server (no network request).",
        schema({"origin": URL}, ["origin"]),
        READ_ONLY,
    ),
    (
        "l402-search",
        "Search for paid API announcements.",
        schema(
            {
                "query": {"type": "string", "maxLength": 200},
                "relays": {"type": "array", "items": URL, "maxItems": 10},
                "topics": {"type": "array", "items": {"type": "string"}, "maxItems": 10},
                "paymentMethod": {"type": "string"},
                "maxResults": {"type": "integer", "minimum": 1, "maximum": 100},
                "timeout": {"type": "integer", "minimum": 1000, "maximum": 30000},
            },
            ["query"],
        ),
        READ_ONLY_OPEN,
    ),
    (
        "l402-store-token",
        "Store an L402 token (macaroon:preimage) obtained from a payment page.",
        schema({"url": URL, "token": {"type": "string", "minLength": 10, "maxLength": 30000}}, ["url", "token"]),
        None,
    ),
]


def exposed(name: str) -> str:
    return name.replace("-", "_") if SNAKE else name


TOOLS = [
    types.Tool(name=exposed(name), description=description, input_schema=input_schema, annotations=annotations)
    for name, description, input_schema, annotations in TOOL_SPECS
]


def require(arguments: JSON, input_schema: JSON, tool: str) -> None:
    """Enough validation to refuse what zod would refuse: missing fields and wrong basic types."""
    for field in input_schema.get("required", []):
        if arguments.get(field) is None:
            raise MCPError(types.INVALID_PARAMS, f"Input validation error: Invalid arguments for tool {tool}: {field}")
    kinds = {"string": str, "boolean": bool, "array": list, "object": dict}
    for field, spec in input_schema.get("properties", {}).items():
        value = arguments.get(field)
        if value is None:
            continue
        expected = spec.get("type")
        if expected == "integer":
            ok = isinstance(value, int) and not isinstance(value, bool)
            ok = ok and ("exclusiveMinimum" not in spec or value > spec["exclusiveMinimum"])
        else:
            ok = expected not in kinds or isinstance(value, kinds[expected])
        if ok and expected == "string" and spec.get("format") == "uri":
            try:
                origin_of(value)
            except ValueError:
                ok = False
        if not ok:
            raise MCPError(types.INVALID_PARAMS, f"Input validation error: Invalid arguments for tool {tool}: {field}")


def response_body(state: JSON, url: str) -> str:
    return state["bodies"].get(url) or json.dumps({"url": url, "data": f"the resource at {url}"})


def ok_fetch(state: JSON, url: str, remaining: int | None, sats_paid: int, knobs: set[str]) -> types.CallToolResult:
    headers = {"content-type": "application/json"}
    if remaining is not None:
        headers["x-credit-balance"] = str(remaining)
    return result(
        {
            "status": 200,
            "headers": headers,
            "body": response_body(state, url),
            "creditsRemaining": remaining,
            "satsPaid": sats_paid,
        },
        knobs=knobs,
    )


def consume_credits(state: JSON, origin: str, url: str) -> tuple[bool, int | None]:
    """The paid server authorises a request with the origin's credential: (granted, credits left)."""
    if origin not in state["credits"]:
        return False, None
    balance = state["credits"][origin]
    if balance is None:
        return True, None
    cost = int(state["credit_costs"].get(url, 1))
    if int(balance) < cost:
        return False, int(balance)
    state["credits"][origin] = int(balance) - cost
    return True, int(balance) - cost


def tool_fetch(state: JSON, args: JSON) -> types.CallToolResult:
    urls = args.get("urls") or []
    primary = urls[0] if urls else args["url"]
    origin = origin_of(primary)
    key = args.get("pubkey") or origin
    now = clock(state)
    cred = state["credentials"].get(key)
    if cred is not None:
        cred["lastUsed"] = iso(now)
    knobs = knobs_for(state, primary, origin)

    x402 = state["x402"].get(primary)
    if x402 is not None:
        if args.get("txHash"):
            return ok_fetch(state, primary, None, 0, knobs)
        return result(
            {
                "status": 402,
                "protocol": "x402",
                "receiver": x402.get("receiver"),
                "network": x402.get("network"),
                "asset": x402.get("asset"),
                "amountUsd": x402.get("amountUsd"),
                "message": f"Payment of ${float(x402.get('amountUsd', 0)):.2f} {str(x402.get('asset', '')).upper()} "
                f"required on {x402.get('network')}. Pay on chain, then call l402-fetch again with txHash.",
            },
            knobs=knobs,
        )

    price = state["prices"].get(primary)
    if price is None:
        return ok_fetch(state, primary, None, 0, knobs)
    price = int(price)

    if cred is not None:
        granted, remaining = consume_credits(state, origin, primary)
        if granted:
            if remaining is not None:
                cred["creditBalance"] = remaining
            return ok_fetch(state, primary, remaining, 0, knobs)

    challenge = new_challenge(state, primary, price)
    payment_hash = challenge["paymentHash"]
    knobs |= knobs_for(state, payment_hash)
    credits_exhausted = cred is not None
    if credits_exhausted:
        del state["credentials"][key]
    auto_pay = bool(args.get("autoPay", False))
    tiers = state["credit_tiers"].get(origin)
    should_pay = not credits_exhausted and auto_pay and price <= MAX_AUTO_PAY_SATS
    within_limit = should_pay and tracker.try_record(price, now)
    if should_pay and within_limit and default_method(state) == "human":
        # No wallet to pay with: a payment page for a human, then `l402-pay {paymentHash}` (captures
        # paywall-human-07): no invoice in the answer, and nothing paid yet.
        tracker.unrecord(price)
        challenge["paymentUrl"] = f"{origin}/invoice-status/{payment_hash}?token={secrets.token_hex(32)}"
        human: JSON = {
            "status": 402,
            "costSats": price,
            "paymentHash": payment_hash,
            "paymentUrl": challenge["paymentUrl"],
        }
        if tiers:
            human["tiers"] = tiers
        human["message"] = (
            f"Payment required: {price} sats. Open the URL to pay, then call l402-pay with paymentHash "
            f'"{payment_hash}" to confirm and retry.'
        )
        return result(human, knobs=knobs)
    if should_pay and within_limit:
        method = default_method(state)
        outcome, reason = pay(
            state, tool="l402-fetch", sats=price, payment_hash=payment_hash, method=method, knobs=knobs, url=primary
        )
        if outcome == "failed":
            tracker.unrecord(price)
            return result(
                {
                    "status": 402,
                    "protocol": "l402",
                    "paymentState": "failed",
                    "costSats": price,
                    "paymentHash": payment_hash,
                    "method": method,
                    "message": f"Payment failed and no money moved: {reason}",
                },
                error=True,
                knobs=knobs,
            )
        if outcome == "unknown":
            return result(
                {
                    "status": 402,
                    "paymentState": "unknown",
                    "costSats": price,
                    "paymentHash": payment_hash,
                    "message": f"Payment may have executed. {RECONCILE_HINT}",
                },
                error=True,
                knobs=knobs,
            )
        store_credential(
            state, key, challenge["macaroon"], challenge["preimage"], payment_hash, server_kind(state, origin)
        )
        state["credits"][origin] = state["grant_credits"].get(origin)
        state["challenges"].pop(payment_hash, None)
        _, remaining = consume_credits(state, origin, primary)
        if remaining is not None:
            state["credentials"][key]["creditBalance"] = remaining
        return ok_fetch(state, primary, remaining, price, knobs)

    if credits_exhausted:
        message = (
            f"Insufficient credits for {origin} (this endpoint costs {price} sats). Use l402-buy-credits to "
            f"purchase more credits{' — tier options are included below' if tiers else ''}."
        )
    elif not auto_pay:
        message = f"Payment of {price} sats required. autoPay disabled."
    elif price > MAX_AUTO_PAY_SATS:
        message = f"Payment of {price} sats required. Exceeds MAX_AUTO_PAY_SATS ({MAX_AUTO_PAY_SATS})."
    else:
        message = "Per-minute spend limit reached."
    body: JSON = {
        "status": 402,
        "costSats": price,
        "invoice": challenge["invoice"],
        "paymentHash": payment_hash,
        "creditsExhausted": credits_exhausted,
    }
    if tiers:
        body["tiers"] = tiers
    body["message"] = message
    return result(body, knobs=knobs)


def tool_pay(state: JSON, args: JSON) -> types.CallToolResult:
    invoice = args.get("invoice")
    macaroon = args.get("macaroon")
    arg_hash = args.get("paymentHash")
    cached = state["challenges"].get(arg_hash) if arg_hash else None
    cached_url = None
    if cached is not None:
        invoice = invoice or cached["invoice"]
        macaroon = macaroon or cached["macaroon"]
        cached_url = cached["url"]
    if not invoice:
        return failure({"paid": False, "reason": "No invoice provided and none cached for this paymentHash"})
    if not macaroon:
        return failure({"paid": False, "reason": "No macaroon provided and none cached for this paymentHash"})
    cost, payment_hash = decode_invoice(invoice)
    if cost is None or payment_hash is None:
        return failure(
            {
                "paid": False,
                "reason": "Invoice has no encoded amount — cannot enforce spend limits. Pay manually or use an "
                "invoice with an explicit amount.",
            }
        )
    if cost > MAX_AUTO_PAY_SATS:
        return failure(
            {"paid": False, "reason": f"Invoice cost ({cost} sats) exceeds auto-pay limit ({MAX_AUTO_PAY_SATS} sats)"}
        )
    now = clock(state)
    if not tracker.try_record(cost, now):
        return failure({"paid": False, "reason": "Per-minute spend limit reached."})
    method = args.get("method") or default_method(state)
    origin = origin_of(cached_url) if cached_url else None
    knobs = knobs_for(state, payment_hash, cached_url, origin)
    outcome, reason = pay(
        state, tool="l402-pay", sats=cost, payment_hash=payment_hash, method=method, knobs=knobs, url=cached_url
    )
    if cached is not None and cached.get("paymentUrl") and method == "human":
        # The human paid on the payment page (knob "failed": never; "unknown": paid, but not seen in time):
        # 402-mcp polls that page and answers without a paymentState (captures paywall-human-09).
        if outcome != "paid":
            if outcome == "failed":
                tracker.unrecord(cost)
            not_confirmed = {
                "paid": False,
                "paymentState": "unknown",
                "reason": "Payment not confirmed after 120s. It may still have settled: call l402-pay again with the "
                "same paymentHash to keep checking.",
                "paymentUrl": cached["paymentUrl"],
            }
            return failure(not_confirmed)
        if origin is not None:
            store_credential(state, origin, macaroon, cached["preimage"], arg_hash or "", "toll-booth")
            state["credits"][origin] = state["grant_credits"].get(origin)
        state["challenges"].pop(arg_hash, None)
        return result({"paid": True, "credentialsStored": origin is not None, "method": "human"}, knobs=knobs)
    if outcome == "failed":
        tracker.unrecord(cost)
        return result(
            {"paid": False, "paymentState": "failed", "credentialsStored": False, "method": method, "reason": reason},
            knobs=knobs,
        )
    if outcome == "unknown":
        return result(
            {
                "paid": False,
                "paymentState": "unknown",
                "credentialsStored": False,
                "method": method,
                "reason": f"Payment may have executed. {RECONCILE_HINT}",
            },
            error=True,
            knobs=knobs,
        )
    stored = False
    if origin is not None and cached is not None:
        preimage = cached["preimage"] if cached["paymentHash"] == payment_hash else secrets.token_hex(32)
        store_credential(state, origin, macaroon, preimage, arg_hash or "", None)
        state["credits"][origin] = state["grant_credits"].get(origin)
        state["challenges"].pop(arg_hash, None)
        stored = True
    return result({"paid": True, "paymentState": "paid", "credentialsStored": stored, "method": method}, knobs=knobs)


def tool_buy_credits(state: JSON, args: JSON) -> types.CallToolResult:
    url = args["url"]
    origin = origin_of(url)
    amount = args.get("amountSats")
    tiers = state["credit_tiers"].get(origin)
    knobs = knobs_for(state, url, origin)
    if amount is None:
        if url not in state["prices"]:
            return failure({"error": "Expected 402 but got 200. This may not be an L402 endpoint."})
        return result({"tiers": tiers or []}, knobs=knobs)
    amount = int(amount)
    method = args.get("method") or default_method(state)
    if method != "human" and amount > MAX_AUTO_PAY_SATS:
        return failure(
            {
                "error": f"Amount {amount} sats exceeds per-request limit ({MAX_AUTO_PAY_SATS} sats). Reduce the "
                "amount or ask the user to confirm."
            }
        )
    now = clock(state)
    if not tracker.try_record(amount, now):
        return failure({"error": "Per-minute spend limit reached."})
    challenge = new_challenge(state, url, amount)
    payment_hash = challenge["paymentHash"]
    knobs |= knobs_for(state, payment_hash)
    outcome, _ = pay(
        state, tool="l402-buy-credits", sats=amount, payment_hash=payment_hash, method=method, knobs=knobs, url=url
    )
    if outcome == "failed":
        tracker.unrecord(amount)
        return failure({"paid": False, "reason": "Payment failed"})
    if outcome == "unknown":
        return result(
            {
                "paid": False,
                "paymentState": "unknown",
                "amountSats": amount,
                "paymentHash": payment_hash,
                "method": method,
                "message": f"Payment may have executed. {RECONCILE_HINT}",
            },
            error=True,
            knobs=knobs,
        )
    credits: int | None = None
    if tiers is not None:
        credits = next((int(t["creditSats"]) for t in tiers if int(t.get("amountSats", -1)) == amount), amount)
    store_credential(
        state, origin, challenge["macaroon"], challenge["preimage"], payment_hash, server_kind(state, origin)
    )
    state["credits"][origin] = credits
    state["challenges"].pop(payment_hash, None)
    return result(
        {"paid": True, "amountSats": amount, "creditsReceived": credits, "credentialsStored": True, "method": method},
        knobs=knobs,
    )


def cashu_value(token: str) -> int | None:
    """The value of a `cashuA` token (base64url JSON `{token: [{mint, proofs: [{amount}]}]}`)."""
    if not token.startswith("cashuA"):
        return None
    try:
        raw = token[len("cashuA") :]
        data = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        return sum(int(p["amount"]) for entry in data["token"] for p in entry["proofs"])
    except Exception:
        return None


def tool_redeem_cashu(state: JSON, args: JSON) -> types.CallToolResult:
    url = args["url"]
    origin = origin_of(url)
    token = args["token"]
    value = cashu_value(token)
    if value is None:
        return failure({"error": "Failed to decode Cashu token"})
    if value <= 0:
        return failure({"error": "Cashu token has no value"})
    if value > MAX_AUTO_PAY_SATS:
        return failure(
            {
                "error": f"Token value ({value} sats) exceeds MAX_AUTO_PAY_SATS ({MAX_AUTO_PAY_SATS}). Increase the "
                "limit or use a smaller token."
            }
        )
    now = clock(state)
    if not tracker.try_record(value, now):
        return failure({"error": "Per-minute spend limit reached."})
    knobs = knobs_for(state, url, origin)
    digest = hashlib.sha256(token.encode()).hexdigest()
    if "failed" in knobs or digest in state["spent_tokens"]:
        tracker.unrecord(value)
        state["attempts"].append(
            {"tool": "l402-redeem-cashu", "amount": value, "unit": "sat", "at": iso(now), "result": "failed"}
        )
        return failure({"error": "Cashu redemption failed (HTTP 400)"})
    preimage = secrets.token_bytes(32)
    payment_hash = hashlib.sha256(preimage).hexdigest()
    state["spent_tokens"].append(digest)
    record = {"tool": "l402-redeem-cashu", "amount": value, "unit": "sat", "payment_hash": payment_hash, "at": iso(now)}
    state["payments"].append({**record, "fee_sats": 0, "method": "cashu", "url": url, "reported": "paid"})
    state["attempts"].append({**record, "result": "paid"})
    store_credential(state, origin, make_macaroon(origin, payment_hash), preimage.hex(), payment_hash, "toll-booth")
    state["credits"][origin] = value
    return result({"redeemed": True, "creditsReceived": value, "credentialsStored": True}, knobs=knobs)


def tool_discover(state: JSON, args: JSON) -> types.CallToolResult:
    url = args["url"]
    origin = origin_of(url)
    knobs = knobs_for(state, url, origin)
    if url in state["x402"]:
        return failure({"error": "No valid L402 challenge in WWW-Authenticate header"})
    if url not in state["prices"]:
        return failure({"error": "Expected 402 but got 200. This endpoint may not require payment.", "status": 200})
    challenge = new_challenge(state, url, int(state["prices"][url]))
    out: JSON = {
        "url": url,
        "costSats": challenge["costSats"],
        "invoice": challenge["invoice"],
        "macaroon": challenge["macaroon"],
        "paymentHash": challenge["paymentHash"],
    }
    # Even a toll-booth server's tiers are not in a discover's answer (captures paywall-human-03).
    return result(out, knobs=knobs)


def preview_one(state: JSON, url: str) -> JSON:
    host = urlsplit(url).hostname
    x402 = state["x402"].get(url)
    if x402 is not None:
        amount = float(x402.get("amountUsd", 0))
        return {
            "status": "preview",
            "endpoint": url,
            "protocol": "x402",
            "costUsd": amount,
            "receiver": x402.get("receiver"),
            "network": x402.get("network"),
            "asset": x402.get("asset"),
            "widgetHint": "payment-confirmation",
            "message": f"Payment of ${amount:.2f} {str(x402.get('asset', '')).upper()} required on "
            f"{x402.get('network')}. Confirm to proceed.",
        }
    if url not in state["prices"]:
        return {"status": "free", "endpoint": url, "statusCode": 200, "message": "No payment required."}
    challenge = new_challenge(state, url, int(state["prices"][url]))
    method = "nwc" if state["nwc_configured"] else "cashu" if state["cashu_configured"] else "none"
    return {
        "status": "preview",
        "endpoint": url,
        "protocol": "l402",
        "costSats": challenge["costSats"],
        "paymentMethod": method,
        "paymentHash": challenge["paymentHash"],
        "expiresAt": challenge["expiresAt"],
        "widgetHint": "payment-confirmation",
        "message": f"Payment of {challenge['costSats']} sats required to access {host}. Confirm to proceed.",
    }


def tool_fetch_preview(state: JSON, args: JSON) -> types.CallToolResult:
    urls = args.get("urls") or [args["url"]]
    previews = [preview_one(state, url) for url in urls]
    knobs = knobs_for(state, urls[0], origin_of(urls[0]))
    return result(previews[0] if len(previews) == 1 else previews, knobs=knobs)


def tool_balance(state: JSON, args: JSON) -> types.CallToolResult:
    try:
        origin = origin_of(args["origin"])
    except ValueError:
        origin = args["origin"]
    cred = state["credentials"].get(origin)
    if cred is None:
        return failure({"error": f"No stored credentials for {origin}"})
    last = cred["lastUsed"]
    stale = clock(state) - parse_time(last) > STALE_AFTER_S
    return result(
        {"origin": origin, "creditsRemaining": cred.get("creditBalance"), "lastUpdated": last, "stale": stale},
        knobs=knobs_for(state, origin),
    )


def tool_credentials(state: JSON, args: JSON) -> types.CallToolResult:
    listed = [
        {
            "origin": c.get("origin", origin),
            "paymentHash": c.get("paymentHash", ""),
            "creditBalance": c.get("creditBalance"),
            "storedAt": c.get("storedAt"),
            "lastUsed": c.get("lastUsed"),
            "server": c.get("server"),
        }
        for origin, c in state["credentials"].items()
    ]
    return result({"credentials": listed})


def tool_config(state: JSON, args: JSON) -> types.CallToolResult:
    return result(
        {
            "nwcConfigured": bool(state["nwc_configured"]),
            "cashuConfigured": bool(state["cashu_configured"]),
            "cashuBalanceSats": int(state["cashu_balance_sats"]),
            "maxAutoPaySats": MAX_AUTO_PAY_SATS,
            "credentialCount": len(state["credentials"]),
        }
    )


def tool_search(state: JSON, args: JSON) -> types.CallToolResult:
    query = str(args.get("query", "")).lower()
    services = list(state["services"])
    if args.get("paymentMethod"):
        wanted = str(args["paymentMethod"]).lower()
        services = [s for s in services if any(m.lower() == wanted for m in s.get("paymentMethods", []))]
    if args.get("topics"):
        services = [s for s in services if set(s.get("topics", [])) & set(args["topics"])]
    if query:

        def text_of(s: JSON) -> str:
            caps = [f"{c.get('name', '')} {c.get('description', '')}" for c in s.get("capabilities", [])]
            return " ".join([s.get("name") or "", s.get("about") or "", *s.get("topics", []), *caps]).lower()

        services = [s for s in services if query in text_of(s)]
    return result(services[: int(args.get("maxResults", 20))])


def tool_store_token(state: JSON, args: JSON) -> types.CallToolResult:
    try:
        origin = origin_of(args["url"])
    except ValueError:
        return failure({"error": "Invalid URL"})
    token = args["token"]
    if ":" not in token:
        return failure({"error": "Invalid token format — expected macaroon:preimage"})
    macaroon, preimage = token.rsplit(":", 1)
    payment_hash = ""
    try:
        text = base64.b64decode(macaroon + "=" * (-len(macaroon) % 4)).decode("utf-8", "replace")
        marker = "payment_hash = "
        if marker in text:
            candidate = text.split(marker, 1)[1][:64]
            if len(candidate) == 64 and all(ch in "0123456789abcdef" for ch in candidate):
                payment_hash = candidate
    except Exception:
        pass
    if len(preimage) != 64 or any(ch not in "0123456789abcdefABCDEF" for ch in preimage):
        return failure({"error": "Token validation failed — check macaroon and preimage format"})
    store_credential(state, origin, macaroon, preimage, payment_hash, "toll-booth")
    out: JSON = {"stored": True, "origin": origin}
    if payment_hash:
        out["paymentHash"] = payment_hash
    return result(out)


HANDLERS = {
    "l402-config": tool_config,
    "l402-discover": tool_discover,
    "l402-fetch-preview": tool_fetch_preview,
    "l402-fetch": tool_fetch,
    "l402-pay": tool_pay,
    "l402-buy-credits": tool_buy_credits,
    "l402-redeem-cashu": tool_redeem_cashu,
    "l402-credentials": tool_credentials,
    "l402-balance": tool_balance,
    "l402-search": tool_search,
    "l402-store-token": tool_store_token,
}
SCHEMAS = {exposed(name): (name, input_schema) for name, _, input_schema, _ in TOOL_SPECS}


async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name not in SCHEMAS:
        raise MCPError(types.INVALID_PARAMS, f"Tool {params.name} not found")
    canonical, input_schema = SCHEMAS[params.name]
    arguments = dict(params.arguments or {})
    require(arguments, input_schema, params.name)
    delay = STATE.load()["delays"].get(str(arguments.get("url")))
    if delay:
        print(f"fake_402mcp: {canonical} waits {delay} s", file=sys.stderr, flush=True)
        await anyio.sleep(float(delay))
    state = STATE.load()
    answer = HANDLERS[canonical](state, arguments)
    STATE.save(state)
    return answer


if __name__ == "__main__":
    serve("402-mcp", "4.2.1", TOOLS, call_tool, STATE)
