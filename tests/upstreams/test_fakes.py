"""The fake payment upstreams (tests/upstreams/fake_*.py) speak the documented shapes (docs: UPSTREAMS.md).

Each fake runs as a real stdio MCP server; these tests talk to it directly with the SDK client and
cross-check what it answered against its own record of what was paid (the state file). Time is the
fake's clock (state `now` / FAKE_NOW): no sleeps.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import bolt11
import pytest
from mcp import Client, MCPError, StdioServerParameters
from mcp.types import CallToolResult

from tests.captures.files import capture
from tests.conftest import INITIALIZE, WAIT_S
from tests.upstreams.x402_payments import PAYER, T0, payment_for

pytestmark = pytest.mark.anyio

UPSTREAMS = Path(__file__).parent


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


@asynccontextmanager
async def fake(
    name: str, state_file: Path, state: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> AsyncIterator[Client]:
    """Start tests/upstreams/<name>.py over stdio with FAKE_STATE=state_file (pre-filled with `state`)."""
    if state is not None:
        write(state_file, state)
    params = StdioServerParameters(
        command=sys.executable,
        args=[str(UPSTREAMS / f"{name}.py")],
        env={**os.environ, "FAKE_STATE": str(state_file), **(env or {})},
    )
    with anyio.fail_after(WAIT_S):
        async with Client(params, mode="legacy") as client:
            yield client


def body(result: CallToolResult) -> Any:
    """The one text item's JSON."""
    assert len(result.content) == 1
    assert result.content[0].type == "text"
    return json.loads(result.content[0].text)


def read(state_file: Path) -> dict[str, Any]:
    return json.loads(state_file.read_text())  # type: ignore[no-any-return]


def write(state_file: Path, state: dict[str, Any]) -> None:
    state_file.write_text(json.dumps(state))


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def edit(state_file: Path, **changes: Any) -> None:
    """Change the fake's state between calls (it re-reads the file before each call)."""
    state = read(state_file)
    state.update(changes)
    tmp = state_file.with_suffix(".edit")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, state_file)


def invoice_for(sats: int | None) -> tuple[str, str]:
    """A real BOLT11 invoice from someone else's node: (invoice, payment hash)."""
    payment_hash = hashlib.sha256(os.urandom(32)).hexdigest()
    tags = bolt11.Tags()
    tags.add(bolt11.TagChar.payment_hash, payment_hash)
    tags.add(bolt11.TagChar.payment_secret, os.urandom(32).hex())
    tags.add(bolt11.TagChar.description, "test")
    amount = bolt11.MilliSatoshi(sats * 1000) if sats else None
    invoice = bolt11.Bolt11(currency="bc", date=T0, tags=tags, amount_msat=amount)
    return bolt11.encode(invoice, private_key="33" * 32), payment_hash


def invoice_sats(invoice: str) -> int:
    return int(bolt11.decode(invoice).amount_msat) // 1000


# --- 402-mcp -----------------------------------------------------------------------------------

SHOP = "https://shop.example"
PAID = f"{SHOP}/api/item"


async def test_402mcp_lists_kebab_tools_and_snake_case_on_request(tmp_path: Path) -> None:
    kebab = [
        "l402-config",
        "l402-discover",
        "l402-fetch-preview",
        "l402-fetch",
        "l402-pay",
        "l402-buy-credits",
        "l402-redeem-cashu",
        "l402-credentials",
        "l402-balance",
        "l402-search",
        "l402-store-token",
    ]
    async with fake("fake_402mcp", tmp_path / "a.json") as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert list(tools) == kebab
        fetch = tools["l402-fetch"].input_schema["properties"]
        assert set(fetch) == {"url", "urls", "method", "headers", "body", "autoPay", "pubkey", "txHash"}
        assert fetch["urls"]["maxItems"] == 10 and fetch["autoPay"]["default"] is False
        assert set(tools["l402-pay"].input_schema["properties"]) == {"invoice", "macaroon", "paymentHash", "method"}
        assert set(tools["l402-buy-credits"].input_schema["properties"]) == {"url", "amountSats", "method"}
        assert tools["l402-balance"].input_schema["required"] == ["origin"]
        assert tools["l402-balance"].annotations is not None and tools["l402-balance"].annotations.read_only_hint
        with pytest.raises(MCPError):
            await client.call_tool("l402_balance", {"origin": SHOP})

    # The old snake_case names, and the clock from FAKE_NOW: a credential used 10 minutes ago is stale.
    credential = {
        "origin": SHOP,
        "macaroon": "bWFj",
        "preimage": "00" * 32,
        "paymentHash": "ab" * 32,
        "creditBalance": None,
        "storedAt": iso(T0 - 600),
        "lastUsed": iso(T0 - 600),
        "server": None,
    }
    env = {"FAKE_SNAKE_CASE": "1", "FAKE_NOW": str(T0)}
    async with fake("fake_402mcp", tmp_path / "b.json", {"credentials": {SHOP: credential}}, env) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert names == [name.replace("-", "_") for name in kebab]
        balance = await client.call_tool("l402_balance", {"origin": f"{SHOP}/some/path"})
        assert not balance.is_error
        assert body(balance) == {"origin": SHOP, "creditsRemaining": None, "lastUpdated": iso(T0 - 600), "stale": True}


async def test_402mcp_fetch_pays_reuses_credits_then_reports_exhaustion(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    state = {"now": T0, "wallet_sats": 1000, "prices": {PAID: 21}, "grant_credits": {SHOP: 2}}
    async with fake("fake_402mcp", state_file, state) as client:
        # autoPay off: the 402 (not an error) with a real invoice for the price; nothing paid.
        unpaid = await client.call_tool("l402-fetch", {"url": PAID})
        assert not unpaid.is_error
        quote = body(unpaid)
        assert list(quote) == ["status", "costSats", "invoice", "paymentHash", "creditsExhausted", "message"]
        assert quote["status"] == 402 and quote["costSats"] == 21 and quote["creditsExhausted"] is False
        assert "autoPay disabled" in quote["message"]
        assert invoice_sats(quote["invoice"]) == 21
        assert bolt11.decode(quote["invoice"]).payment_hash == quote["paymentHash"]
        assert read(state_file)["payments"] == []

        missing = await client.call_tool("l402-balance", {"origin": SHOP})
        assert missing.is_error and body(missing) == {"error": f"No stored credentials for {SHOP}"}

        # autoPay on: pays 21 sat, the server grants 2 credits, this fetch uses 1.
        paid = body(await client.call_tool("l402-fetch", {"url": PAID, "autoPay": True}))
        assert list(paid) == ["status", "headers", "body", "creditsRemaining", "satsPaid"]
        assert paid["status"] == 200 and paid["satsPaid"] == 21 and paid["creditsRemaining"] == 1
        assert paid["headers"]["x-credit-balance"] == "1" and PAID in paid["body"]
        after = read(state_file)
        [payment] = after["payments"]
        assert payment["tool"] == "l402-fetch" and payment["amount"] == 21 and payment["unit"] == "sat"
        assert payment["at"] == iso(T0) and re.fullmatch(r"[0-9a-f]{64}", payment["payment_hash"])
        assert after["wallet_sats"] == 1000 - 21
        assert after["credentials"][SHOP]["paymentHash"] == payment["payment_hash"]

        assert body(await client.call_tool("l402-balance", {"origin": SHOP})) == {
            "origin": SHOP,
            "creditsRemaining": 1,
            "lastUpdated": iso(T0),
            "stale": False,
        }
        # Five minutes and a second later the cached balance is stale; asking again does not refresh it.
        edit(state_file, now=T0 + 301)
        for _ in range(2):
            assert body(await client.call_tool("l402-balance", {"origin": SHOP}))["stale"] is True

        # The credential is reused: no sats, one credit less; its last use is now.
        reused = body(await client.call_tool("l402-fetch", {"url": PAID, "autoPay": True}))
        assert (reused["status"], reused["satsPaid"], reused["creditsRemaining"]) == (200, 0, 0)
        assert body(await client.call_tool("l402-balance", {"origin": SHOP})) == {
            "origin": SHOP,
            "creditsRemaining": 0,
            "lastUpdated": iso(T0 + 301),
            "stale": False,
        }

        # Credits exhausted: a 402 even with autoPay, the credential is dropped, nothing is paid.
        exhausted = await client.call_tool("l402-fetch", {"url": PAID, "autoPay": True})
        assert not exhausted.is_error
        assert body(exhausted)["creditsExhausted"] is True and "Insufficient credits" in body(exhausted)["message"]
        assert len(read(state_file)["payments"]) == 1
        assert body(await client.call_tool("l402-credentials", {})) == {"credentials": []}

        # Without a credential the next autoPay fetch buys again.
        again = body(await client.call_tool("l402-fetch", {"url": PAID, "autoPay": True}))
        assert (again["satsPaid"], again["creditsRemaining"]) == (21, 1)
        final = read(state_file)
        assert [p["amount"] for p in final["payments"]] == [21, 21]
        assert len({p["payment_hash"] for p in final["payments"]}) == 2
        assert final["wallet_sats"] == 1000 - 42
    assert files_in(tmp_path) == ["state.json"]  # no temp files left behind


async def test_402mcp_fetch_caps_and_outcome_knobs(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    # One origin each: a credential is per origin, and an unmetered one would serve every URL there.
    urls = {
        name: f"https://{name}.example/x" for name in ("big", "unknown", "failed", "malformed", "strings", "g", "h")
    }
    state = {
        "now": T0,
        "prices": {url: (600 if name == "big" else 10) for name, url in urls.items()},
        "outcomes": {urls[k]: k for k in ("unknown", "failed", "malformed", "strings")},
    }
    env = {"MAX_AUTO_PAY_SATS": "500", "MAX_SPEND_PER_MINUTE_SATS": "45"}
    async with fake("fake_402mcp", state_file, state, env) as client:
        assert body(await client.call_tool("l402-config", {})) == {
            "nwcConfigured": True,
            "cashuConfigured": False,
            "cashuBalanceSats": 0,
            "maxAutoPaySats": 500,
            "credentialCount": 0,
        }
        over = body(await client.call_tool("l402-fetch", {"url": urls["big"], "autoPay": True}))
        assert over["status"] == 402 and "Exceeds MAX_AUTO_PAY_SATS (500)" in over["message"]

        # Outcome unknown: an error result, the documented shape; the money did leave.
        unknown = await client.call_tool("l402-fetch", {"url": urls["unknown"], "autoPay": True})
        assert unknown.is_error
        shape = body(unknown)
        assert list(shape) == ["status", "paymentState", "costSats", "paymentHash", "message"]
        assert (shape["status"], shape["paymentState"], shape["costSats"]) == (402, "unknown", 10)
        [spent] = read(state_file)["payments"]
        assert spent["payment_hash"] == shape["paymentHash"] and spent["reported"] == "unknown"
        # Paying that hash again is refused by the wallet (already paid): still one payment.
        repay = body(await client.call_tool("l402-pay", {"paymentHash": shape["paymentHash"]}))
        assert repay["paid"] is False and repay["paymentState"] == "failed"
        assert len(read(state_file)["payments"]) == 1

        failed = await client.call_tool("l402-fetch", {"url": urls["failed"], "autoPay": True})
        assert failed.is_error and body(failed)["paymentState"] == "failed"
        assert len(read(state_file)["payments"]) == 1
        assert read(state_file)["attempts"][-1]["result"] == "failed"

        malformed = await client.call_tool("l402-fetch", {"url": urls["malformed"], "autoPay": True})
        with pytest.raises(json.JSONDecodeError):
            json.loads(malformed.content[0].text)  # type: ignore[union-attr]
        strings = body(await client.call_tool("l402-fetch", {"url": urls["strings"], "autoPay": True}))
        assert (strings["status"], strings["satsPaid"], strings["creditsRemaining"]) == ("200", "10", None)
        assert [p["amount"] for p in read(state_file)["payments"]] == [10, 10, 10]

        # The per-minute cap (45): 30 spent, 10 more fits, the next 10 does not, until a minute passes.
        assert body(await client.call_tool("l402-fetch", {"url": urls["g"], "autoPay": True}))["satsPaid"] == 10
        capped = body(await client.call_tool("l402-fetch", {"url": urls["h"], "autoPay": True}))
        assert capped["status"] == 402 and capped["message"] == "Per-minute spend limit reached."
        edit(state_file, now=T0 + 61)
        assert body(await client.call_tool("l402-fetch", {"url": urls["h"], "autoPay": True}))["satsPaid"] == 10
        assert sum(p["amount"] for p in read(state_file)["payments"]) == 50


async def test_402mcp_with_no_wallet_answers_an_autopay_fetch_and_its_l402_pay_as_the_real_one_did(
    tmp_path: Path,
) -> None:
    """Captures paywall-human-07 and -09: a payment page instead of an invoice; `l402-pay {paymentHash}`
    answers without amount or paymentState."""

    def recorded(name: str) -> Any:
        return json.loads(capture(name)["response"]["result"]["content"][0]["text"])

    state_file = tmp_path / "state.json"
    tiers = [{"amountSats": 100, "creditSats": 110, "label": "110 credits"}]
    state = {"now": T0, "nwc_configured": False, "prices": {PAID: 21}, "credit_tiers": {SHOP: tiers}}
    async with fake("fake_402mcp", state_file, state) as client:
        asked = body(await client.call_tool("l402-fetch", {"url": PAID, "autoPay": True}))
        assert list(asked) == list(recorded("paywall-human-07-l402-fetch-autopay-human"))
        assert (asked["status"], asked["costSats"], read(state_file)["payments"]) == (402, 21, [])
        assert asked["paymentUrl"].startswith(f"{SHOP}/invoice-status/{asked['paymentHash']}?token=")
        paid = await client.call_tool("l402-pay", {"paymentHash": asked["paymentHash"]})
        assert not paid.is_error and body(paid) == recorded("paywall-human-09-l402-pay")
        [payment] = read(state_file)["payments"]
        assert (payment["amount"], payment["method"], payment["payment_hash"]) == (21, "human", asked["paymentHash"])
        assert body(await client.call_tool("l402-fetch", {"url": PAID}))["status"] == 200  # the credential works


async def test_402mcp_discover_pay_buy_redeem_store_search(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    booth = "https://booth.example"
    tiers = [{"amountSats": 100, "creditSats": 120, "label": "starter"}]
    x402_url = "https://chain.example/data"
    state = {
        "now": T0,
        "prices": {PAID: 50, f"{booth}/api": 5},
        "credit_tiers": {booth: tiers},
        "x402": {x402_url: {"receiver": "0xabc", "network": "base", "asset": "usdc", "amountUsd": 0.25}},
    }
    async with fake("fake_402mcp", state_file, state) as client:
        found = body(await client.call_tool("l402-discover", {"url": PAID}))
        assert list(found) == ["url", "costSats", "invoice", "macaroon", "paymentHash"]
        assert found["costSats"] == 50 and invoice_sats(found["invoice"]) == 50
        toll = body(await client.call_tool("l402-discover", {"url": f"{booth}/api"}))
        assert list(toll) == list(found)  # 402-mcp 4.2.1 names no tiers here (captures paywall-human-03)
        free = await client.call_tool("l402-discover", {"url": f"{SHOP}/free"})
        assert free.is_error and "Expected 402" in body(free)["error"]

        preview = body(await client.call_tool("l402-fetch-preview", {"url": PAID}))
        assert (preview["status"], preview["protocol"], preview["costSats"]) == ("preview", "l402", 50)
        assert preview["paymentMethod"] == "nwc" and preview["expiresAt"] == (T0 + 3600) * 1000
        batch = body(await client.call_tool("l402-fetch-preview", {"url": PAID, "urls": [f"{SHOP}/free", x402_url]}))
        assert [p["status"] for p in batch] == ["free", "preview"] and batch[1]["costUsd"] == 0.25
        assert read(state_file)["payments"] == []

        # l402-pay with the cached challenge: paid, the credential is stored; the amount is the invoice's.
        paid = await client.call_tool("l402-pay", {"paymentHash": found["paymentHash"]})
        assert not paid.is_error
        assert body(paid) == {"paid": True, "paymentState": "paid", "credentialsStored": True, "method": "nwc"}
        [payment] = read(state_file)["payments"]
        assert (payment["amount"], payment["payment_hash"]) == (50, found["paymentHash"])
        assert body(await client.call_tool("l402-fetch", {"url": PAID}))["satsPaid"] == 0

        # l402-pay knob: unknown outcome (an error, the money left).
        second = body(await client.call_tool("l402-discover", {"url": PAID}))
        edit(state_file, outcomes={second["paymentHash"]: "unknown"})
        unknown = await client.call_tool("l402-pay", {"invoice": second["invoice"], "macaroon": second["macaroon"]})
        assert unknown.is_error and body(unknown)["paymentState"] == "unknown" and body(unknown)["paid"] is False
        assert [p["reported"] for p in read(state_file)["payments"]] == ["paid", "unknown"]
        amountless, _ = invoice_for(None)
        refused = await client.call_tool("l402-pay", {"invoice": amountless, "macaroon": "bWFj"})
        assert refused.is_error and body(refused)["paid"] is False

        # Credits: list the tiers, then buy one.
        assert body(await client.call_tool("l402-buy-credits", {"url": f"{booth}/api"})) == {"tiers": tiers}
        bought = body(await client.call_tool("l402-buy-credits", {"url": f"{booth}/api", "amountSats": 100}))
        assert bought == {
            "paid": True,
            "amountSats": 100,
            "creditsReceived": 120,
            "credentialsStored": True,
            "method": "nwc",
        }
        used = body(await client.call_tool("l402-fetch", {"url": f"{booth}/api"}))
        assert (used["satsPaid"], used["creditsRemaining"]) == (0, 119)
        too_much = await client.call_tool("l402-buy-credits", {"url": f"{booth}/api", "amountSats": 5000})
        assert too_much.is_error and "exceeds per-request limit" in body(too_much)["error"]

        # Cashu: the token's value (64 sat) is spent, once.
        proofs = [{"amount": 32, "id": "009a1f293253e41e", "secret": f"s{i}", "C": "02" + "ab" * 32} for i in range(2)]
        raw = json.dumps({"token": [{"mint": "https://mint.example", "proofs": proofs}]}).encode()
        token = "cashuA" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
        redeemed = body(await client.call_tool("l402-redeem-cashu", {"url": "https://cashu.example/x", "token": token}))
        assert redeemed == {"redeemed": True, "creditsReceived": 64, "credentialsStored": True}
        again = await client.call_tool("l402-redeem-cashu", {"url": "https://cashu.example/x", "token": token})
        assert again.is_error
        record = read(state_file)["payments"]
        assert [(p["tool"], p["amount"], p["unit"]) for p in record] == [
            ("l402-pay", 50, "sat"),
            ("l402-pay", 50, "sat"),
            ("l402-buy-credits", 100, "sat"),
            ("l402-redeem-cashu", 64, "sat"),
        ]

        # A token from a payment page; the payment hash comes out of the macaroon.
        stored = body(
            await client.call_tool(
                "l402-store-token", {"url": "https://page.example/a", "token": f"{second['macaroon']}:{'cd' * 32}"}
            )
        )
        assert stored == {"stored": True, "origin": "https://page.example", "paymentHash": second["paymentHash"]}
        creds = body(await client.call_tool("l402-credentials", {}))["credentials"]
        assert {c["origin"] for c in creds} == {SHOP, booth, "https://cashu.example", "https://page.example"}
        assert all(
            list(c) == ["origin", "paymentHash", "creditBalance", "storedAt", "lastUsed", "server"] for c in creds
        )

        # The x402 variant is never auto-paid; a txHash retry gets the resource.
        x402 = await client.call_tool("l402-fetch", {"url": x402_url, "autoPay": True})
        assert not x402.is_error
        assert list(body(x402)) == ["status", "protocol", "receiver", "network", "asset", "amountUsd", "message"]
        retry = body(await client.call_tool("l402-fetch", {"url": x402_url, "txHash": "0x" + "ef" * 32}))
        assert (retry["status"], retry["satsPaid"]) == (200, 0)

        services = body(await client.call_tool("l402-search", {"query": "weather"}))
        assert [s["name"] for s in services] == ["Fake Weather"] and services[0]["pricing"][0]["amount"] == "10"
        assert len(read(state_file)["payments"]) == 4


# --- P402 --------------------------------------------------------------------------------------


async def test_p402_sessions_budget_and_chat(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    async with fake("fake_p402", state_file, {"now": T0, "chat_cost_usd": 0.01}) as client:
        names = [t.name for t in (await client.list_tools()).tools]
        assert names == [
            "p402_chat",
            "p402_create_session",
            "p402_get_session",
            "p402_list_models",
            "p402_compare_providers",
            "p402_health",
            "p402_agent_status",
        ]
        created = body(await client.call_tool("p402_create_session", {"budget_usd": 0.025, "expires_in_hours": 1}))
        assert list(created) == ["id", "status", "budget", "expires_at", "session_key"]
        sid = created["id"]
        assert re.fullmatch(r"sess_[0-9a-f]{24}", sid) and len(created["session_key"]) > 40
        assert created["status"] == "active" and created["expires_at"] == iso(T0 + 3600)
        assert created["budget"] == {
            "total_usd": 0.025,
            "used_usd": 0.0,
            "remaining_usd": 0.025,
            "utilization_percent": 0,
        }

        chat = await client.call_tool("p402_chat", {"message": "hello there", "session_id": sid})
        assert not chat.is_error
        answer = body(chat)
        assert set(answer) == {"response", "metadata"}
        assert {"cost_usd", "model", "provider", "input_tokens", "output_tokens"} <= set(answer["metadata"])
        assert answer["metadata"]["cost_usd"] == 0.01
        live = body(await client.call_tool("p402_get_session", {"session_id": sid}))
        assert list(live) == ["id", "status", "budget", "expires_at"]
        assert live["budget"] == {
            "total_usd": 0.025,
            "used_usd": 0.01,
            "remaining_usd": 0.015,
            "utilization_percent": 40.0,
        }

        await client.call_tool("p402_chat", {"message": "two", "session_id": sid})
        await client.call_tool("p402_chat", {"message": "three", "session_id": sid})  # overshoots: 0.03 of 0.025
        spent = body(await client.call_tool("p402_get_session", {"session_id": sid}))
        assert spent["status"] == "exhausted" and spent["budget"]["remaining_usd"] == 0
        refused = await client.call_tool("p402_chat", {"message": "four", "session_id": sid})
        assert refused.is_error and refused.content[0].text.startswith("Error: ")  # type: ignore[union-attr]
        record = read(state_file)["payments"]
        assert [(p["amount"], p["unit"], p["session_id"]) for p in record] == [(10_000, "usd_micro", sid)] * 3

        missing = await client.call_tool("p402_get_session", {"session_id": "sess_nope"})
        assert missing.is_error and missing.content[0].text == "Error: Session sess_nope not found"  # type: ignore[union-attr]
        assert (await client.call_tool("p402_chat", {"message": "x", "session_id": "sess_nope"})).is_error

        # Expiry on read once expires_at has passed (fake clock).
        short = body(await client.call_tool("p402_create_session", {"budget_usd": 5, "expires_in_hours": 1}))
        edit(state_file, now=T0 + 3601)
        assert body(await client.call_tool("p402_get_session", {"session_id": short["id"]}))["status"] == "expired"
        assert (await client.call_tool("p402_chat", {"message": "late", "session_id": short["id"]})).is_error

        # The knob for the unverified behaviour: a session's used_usd does not move.
        edit(state_file, session_charging=False, chat_cost_usd=0.5)
        loose = body(await client.call_tool("p402_create_session", {"budget_usd": 1}))
        assert (
            body(await client.call_tool("p402_chat", {"message": "x", "session_id": loose["id"]}))["metadata"][
                "cost_usd"
            ]
            == 0.5
        )
        assert body(await client.call_tool("p402_get_session", {"session_id": loose["id"]}))["budget"]["used_usd"] == 0
        assert read(state_file)["payments"][-1]["amount"] == 500_000

        assert (await client.call_tool("p402_create_session", {"budget_usd": 0})).is_error
        assert body(await client.call_tool("p402_chat", {"message": "no session"}))["metadata"]["cost_usd"] == 0.5
        assert "models" in body(await client.call_tool("p402_list_models", {}))
        assert "providers" in body(await client.call_tool("p402_compare_providers", {}))
        assert body(await client.call_tool("p402_health", {}))["status"] == "ok"
        assert body(await client.call_tool("p402_agent_status", {}))["requests"] == 5


# --- x402 over MCP -----------------------------------------------------------------------------


async def test_x402_payment_required_paid_retry_upto_and_failures(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    async with fake("fake_x402", state_file, {"now": T0}) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["get_weather", "summarize", "ping"]
        assert not (await client.call_tool("ping", {})).is_error

        unpaid = await client.call_tool("get_weather", {"city": "Oslo"})
        assert unpaid.is_error and unpaid.meta is None
        required = unpaid.structured_content
        assert required is not None and json.loads(unpaid.content[0].text) == required  # type: ignore[union-attr]
        assert required["x402Version"] == 2 and required["resource"]["url"] == "mcp://tool/get_weather"
        assert required["accepts"] == [
            {
                "scheme": "exact",
                "network": "eip155:84532",
                "asset": "0x036CbD53842c5426634e7929541eC2318f3dCF7e",
                "amount": "10000",
                "payTo": "0x209693Bc6afc0C5328bA36FaF03C514EF312287C",
                "maxTimeoutSeconds": 300,
                "extra": {"name": "USDC", "version": "2"},
            }
        ]
        # As the official SDK writes it (tests/x402 runs the real one): json.dumps' separators, this key order.
        assert unpaid.content[0].text.startswith('{"x402Version": 2, "accepts": [{"scheme": "exact"')  # type: ignore[union-attr]
        assert required["error"] == "Payment Required"

        payment = payment_for(required, "aa")
        paid = await client.call_tool("get_weather", {"city": "Oslo"}, meta={"x402/payment": payment})
        assert not paid.is_error and "Oslo" in paid.content[0].text  # type: ignore[union-attr]
        receipt = paid.meta["x402/payment-response"]  # type: ignore[index]
        assert receipt["success"] is True and receipt["network"] == "eip155:84532" and receipt["payer"] == PAYER
        # The SDK's exact receipt names no amount: the payment's price is what moved.
        assert "amount" not in receipt and re.fullmatch(r"0x[0-9a-f]{64}", receipt["transaction"])
        [record] = read(state_file)["payments"]
        assert (record["tool"], record["amount"], record["unit"]) == ("get_weather", 10_000, "usdc")
        assert record["nonce"] == "0x" + "aa" * 32 and record["transaction"] == receipt["transaction"]

        # A replayed nonce, a wrong value and an expired authorization are refused; nothing settles.
        replay = await client.call_tool("get_weather", {"city": "Oslo"}, meta={"x402/payment": payment})
        assert replay.is_error and replay.structured_content["error"] == "invalid_exact_evm_nonce_already_used"  # type: ignore[index]
        wrong = payment_for(required, "bb", value="1")
        assert (await client.call_tool("get_weather", {"city": "x"}, meta={"x402/payment": wrong})).is_error
        stale = payment_for(required, "cc", now=T0 - 3600)
        assert (await client.call_tool("get_weather", {"city": "x"}, meta={"x402/payment": stale})).is_error
        assert len(read(state_file)["payments"]) == 1

        # upto: the payment authorises the maximum, settlement takes less.
        text = "one two three four five"
        upto_required = (await client.call_tool("summarize", {"text": text})).structured_content
        assert upto_required is not None and upto_required["accepts"][0]["scheme"] == "upto"
        assert upto_required["accepts"][0]["amount"] == "50000"
        summary = await client.call_tool(
            "summarize", {"text": text}, meta={"x402/payment": payment_for(upto_required, "dd")}
        )
        assert summary.meta["x402/payment-response"]["amount"] == str(2000 + 200 * 5)  # type: ignore[index]
        upto = read(state_file)["payments"][-1]
        assert (upto["amount"], upto["max_amount"], upto["scheme"]) == (3000, 50_000, "upto")

        # Settlement fails (a revert): an error, no tool content, nothing recorded; the SDK's receipt is in
        # structuredContent only, with no payer and an empty transaction.
        edit(state_file, outcomes={"get_weather": "failed"})
        failed = await client.call_tool(
            "get_weather", {"city": "x"}, meta={"x402/payment": payment_for(required, "ee")}
        )
        settlement = failed.structured_content
        assert failed.is_error and failed.meta is None and settlement is not None
        assert settlement["error"] == "Payment settlement failed: transaction_failed"
        assert settlement["x402/payment-response"] == {
            "success": False,
            "errorReason": "transaction_failed",
            "transaction": "",
            "network": "eip155:84532",
        }
        # Settled without a receipt: the content, no _meta; the fake's record has it.
        edit(state_file, outcomes={"get_weather": "no_receipt"})
        bare = await client.call_tool("get_weather", {"city": "x"}, meta={"x402/payment": payment_for(required, "ff")})
        assert not bare.is_error and bare.meta is None
        assert [p["reported"] for p in read(state_file)["payments"]] == ["paid", "paid", "no_receipt"]

        # A payer with a known balance can run out: refused at verification, as the SDK's facilitator does.
        edit(state_file, outcomes={}, balances={PAYER.lower(): 5000})
        poor = await client.call_tool("get_weather", {"city": "x"}, meta={"x402/payment": payment_for(required, "11")})
        assert poor.is_error and poor.structured_content["error"] == "invalid_exact_evm_insufficient_balance"  # type: ignore[index]
        assert len(read(state_file)["payments"]) == 3

        # settlement_pending: the transfer landed, its receipt was lost; a tool that fails settles nothing.
        edit(state_file, balances={}, outcomes={"get_weather": "pending"})
        pending = await client.call_tool(
            "get_weather", {"city": "x"}, meta={"x402/payment": payment_for(required, "12")}
        )
        assert pending.structured_content["x402/payment-response"]["errorReason"] == "settlement_pending"  # type: ignore[index]
        edit(state_file, outcomes={"get_weather": "tool_fails"})
        broken = await client.call_tool(
            "get_weather", {"city": "x"}, meta={"x402/payment": payment_for(required, "13")}
        )
        assert broken.is_error and broken.structured_content is None
        assert broken.content[0].text.startswith("Tool execution error: ")  # type: ignore[union-attr]
        assert [p["reported"] for p in read(state_file)["payments"]] == ["paid", "paid", "no_receipt", "pending"]


async def test_x402_meta_on_the_wire_and_settle_then_crash(tmp_path: Path) -> None:
    """Raw JSON-RPC lines: `_meta["x402/payment"]` reaches the handler; the receipt is `result._meta`."""
    state_file = tmp_path / "state.json"
    write(state_file, {"now": T0})
    env = {**os.environ, "FAKE_STATE": str(state_file)}
    with anyio.fail_after(WAIT_S):
        async with await anyio.open_process(
            [sys.executable, str(UPSTREAMS / "fake_x402.py")], env=env, stderr=None
        ) as process:
            assert process.stdin is not None and process.stdout is not None
            buffer = b""

            async def send(message: dict[str, Any]) -> None:
                await process.stdin.send(json.dumps(message).encode() + b"\n")  # type: ignore[union-attr]

            async def receive(request_id: int) -> dict[str, Any]:
                nonlocal buffer
                while True:
                    while b"\n" in buffer:
                        line, buffer = buffer.split(b"\n", 1)
                        message = json.loads(line)
                        if message.get("id") == request_id:
                            return message  # type: ignore[no-any-return]
                    buffer += await process.stdout.receive()  # type: ignore[union-attr]

            await send(INITIALIZE)
            await receive(1)
            await send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            call = {"name": "get_weather", "arguments": {"city": "Oslo"}}
            await send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call})
            unpaid = (await receive(2))["result"]
            assert unpaid["isError"] is True and unpaid["structuredContent"]["x402Version"] == 2
            assert json.loads(unpaid["content"][0]["text"]) == unpaid["structuredContent"]
            meta = {"x402/payment": payment_for(unpaid["structuredContent"], "a1"), "progressToken": 7}
            await send({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {**call, "_meta": meta}})
            paid = (await receive(3))["result"]
            assert paid["_meta"]["x402/payment-response"]["success"] is True
            assert "isError" not in paid or paid["isError"] is False

            # "crash": the fake settles (and records it), then dies before answering.
            edit(state_file, outcomes={"get_weather": "crash"})
            meta = {"x402/payment": payment_for(unpaid["structuredContent"], "a2")}
            await send({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {**call, "_meta": meta}})
            assert await process.wait() == 9
    assert [p["reported"] for p in read(state_file)["payments"]] == ["paid", "crash"]


# --- Alby --------------------------------------------------------------------------------------


async def test_alby_pay_invoice_fetch_l402_and_balance(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    paid_url = "https://paid.example/article"
    state = {"now": T0, "wallet_sats": 10_000, "fee_sats": 2, "prices": {paid_url: 40}}
    async with fake("fake_alby", state_file, state) as client:
        assert [t.name for t in (await client.list_tools()).tools] == ["pay_invoice", "fetch_l402", "get_balance"]
        invoice, payment_hash = invoice_for(1234)
        result = await client.call_tool("pay_invoice", {"invoice": invoice})
        assert not result.is_error
        answer = body(result)
        assert list(answer) == ["preimage", "fees_paid_in_sats"] and answer["fees_paid_in_sats"] == 2
        assert re.fullmatch(r"[0-9a-f]{64}", answer["preimage"])
        [record] = read(state_file)["payments"]
        assert (record["amount"], record["unit"], record["payment_hash"]) == (1234, "sat", payment_hash)
        again = await client.call_tool("pay_invoice", {"invoice": invoice})
        assert again.is_error and "already paid" in again.content[0].text  # type: ignore[union-attr]

        amountless, _ = invoice_for(None)
        assert (await client.call_tool("pay_invoice", {"invoice": amountless})).is_error
        assert not (await client.call_tool("pay_invoice", {"invoice": amountless, "amount_in_sats": 5})).is_error

        # fetch_l402 pays silently: the body, no amount anywhere; the fake's record has it. Every fetch pays.
        for _ in range(2):
            fetched = await client.call_tool("fetch_l402", {"url": paid_url})
            assert not fetched.is_error and paid_url in fetched.content[0].text  # type: ignore[union-attr]
            assert fetched.structured_content == {"content": fetched.content[0].text, "status": 200}  # type: ignore[union-attr]
        edit(state_file, outcomes={paid_url: "unknown"})
        timeout = await client.call_tool("fetch_l402", {"url": paid_url})
        assert timeout.is_error and "reply timeout" in timeout.content[0].text  # type: ignore[union-attr]

        final = read(state_file)
        assert [(p["tool"], p["amount"], p["reported"]) for p in final["payments"]] == [
            ("pay_invoice", 1234, "paid"),
            ("pay_invoice", 5, "paid"),
            ("fetch_l402", 40, "paid"),
            ("fetch_l402", 40, "paid"),
            ("fetch_l402", 40, "unknown"),
        ]
        expected = 10_000 - (1234 + 5 + 40 * 3) - 2 * 5
        assert final["wallet_sats"] == expected
        assert body(await client.call_tool("get_balance", {})) == {"amount_in_sats": expected}

    async with fake("fake_alby", state_file, env={"FAKE_OLD_BALANCE": "1"}) as client:
        assert body(await client.call_tool("get_balance", {})) == {"balance": expected * 1000}


# --- Token Pilot -------------------------------------------------------------------------------


async def test_token_pilot_session_budget(tmp_path: Path) -> None:
    sessions = {"s1": {"savedTokens": 45_000, "eventCount": 9, "firstEventMs": T0 * 1000, "lastEventMs": T0 * 1000 + 5}}
    async with fake("fake_token_pilot", tmp_path / "state.json", {"sessions": sessions}) as client:
        budget = body(await client.call_tool("session_budget", {"sessionId": "s1"}))
        assert {
            "savedTokens",
            "budgetTokens",
            "burnFraction",
            "baseThreshold",
            "effectiveThreshold",
            "eventCount",
            "eventsUntilExhaustion",
        } <= set(budget)
        assert (budget["savedTokens"], budget["budgetTokens"], budget["burnFraction"]) == (45_000, 100_000, 0.45)
        assert (budget["baseThreshold"], budget["effectiveThreshold"]) == (300, 225)
        assert (budget["eventCount"], budget["avgSavedPerEvent"], budget["eventsUntilExhaustion"]) == (9, 5000, 11)
        fresh = body(await client.call_tool("session_budget", {"sessionId": "new"}))
        assert (fresh["savedTokens"], fresh["burnFraction"], fresh["eventsUntilExhaustion"]) == (0, 0, None)
