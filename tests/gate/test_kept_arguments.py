"""`audit: {arguments: redacted}`: the gate keeps each call's arguments in its call event with every secret
removed (guard/redact.py's `redact_arguments`), so `guard policy simulate` can replay a candidate's conditions;
without it, only the digest. In process: a real gate, a real SQLite ledger, the audit writer."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from guard.core import JSON, Session, ToolCall
from guard.gate.gate import PolicyGate
from guard.policy.files import parse
from guard.policy.source import PolicySource
from ledgers import Ledger

MACAROON = (
    "AgEDbG9jYWxob3N0OjgwODACJDMxMzQ1ZjU2LTdiNzItNGRmMS1hNjI1LTk3MjFjZTNlNzE1ZgAABiD5aq3d0vH2CvQhT9oYxtK8hEJmsOJ1VQ"
)
PREIMAGE = "7f3c9d2e41b8a6f05c1d3e7a9b2f4c6d8e0a1b3c5d7f9e2a4b6c8d0e1f3a5b7c"
API_KEY = "sk_live_51HaBcDeFgHiJkLmNoPqRsTu"
NWC = (
    "nostr+walletconnect://b889ff5b1513b641e2a139f661a661364979c5beee91842f8f0ef42ab558e9d4"
    "?relay=wss%3A%2F%2Frelay.example&secret=71a8c14c1407c113601079c4302dab36460f0ccd0ad506f1f2dc73b5100e4f3c"
)
X402_SIGNATURE = (
    "0x2d6a7588d6acca505cbf0d9a4a227e0c52c6c34008c8e8986a1283259764173608a2ce6496642e377d6da8dbbf5836e9bd15092f9"
    "ecab05ded3d6293af148b571c"
)
PAYMENT_HASH = "a3f1" * 16  # public: the invoice carries it
ARGUMENTS: JSON = {
    "url": f"https://api.example/v1/report?api_key={API_KEY}&city=paris",
    "macaroon": MACAROON,
    "preimage": PREIMAGE,
    "headers": {"Authorization": f"L402 {MACAROON}:{PREIMAGE}"},
    "note": f"retry with {API_KEY} if it fails",
    "wallet": NWC,
    "x402": {"payload": {"signature": X402_SIGNATURE, "nonce": "0x01"}},
    "paymentHash": PAYMENT_HASH,
    "maxSats": 50,
}
SECRETS = [MACAROON, PREIMAGE, API_KEY, NWC.split("?")[0], "71a8c14c1407c113601079c4302dab36", X402_SIGNATURE[2:40]]


async def one_call(ledger: Ledger, policy_text: str, arguments: JSON) -> str | None:
    """The stored `arguments` of one call through a gate with this policy."""
    policy, _ = parse(policy_text)
    gate = PolicyGate(PolicySource(policy), ledger, "upstream")

    async def forward() -> JSON:
        return {"content": [{"type": "text", "text": "ok"}], "isError": False}

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(gate.audit.write)
        await gate.call_tool(ToolCall(Session("s1"), 1, "fetch", arguments, None), forward)
        tasks.cancel_scope.cancel()  # the writer writes what is queued before it stops
    [event] = ledger.calls(last=10)
    return event.call.arguments


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger.open(tmp_path / "ledger.db")


def test_redacted_arguments_keep_their_shape_and_none_of_the_planted_secrets(ledger: Ledger) -> None:
    stored = anyio.run(one_call, ledger, "version: 1\naudit: {arguments: redacted}\ntools: {fetch: {}}\n", ARGUMENTS)
    assert stored is not None
    for secret in SECRETS:
        assert secret not in stored
    kept = json.loads(stored)
    # What conditions read stays: the URL (its secret query value gone), public payment hashes, numbers.
    assert kept["url"] == "https://api.example/v1/report?api_key=[redacted]&city=paris"
    assert (kept["paymentHash"], kept["maxSats"]) == (PAYMENT_HASH, 50)
    assert kept["macaroon"] == kept["preimage"] == kept["headers"]["Authorization"] == "[redacted]"
    assert kept["note"] == "retry with [redacted] if it fails"
    assert kept["wallet"] == "[redacted]"
    assert kept["x402"]["payload"]["signature"] == "[redacted]"
    ledger.close()


def test_without_the_opt_in_a_call_event_keeps_no_arguments(ledger: Ledger) -> None:
    assert anyio.run(one_call, ledger, "version: 1\ntools: {fetch: {}}\n", ARGUMENTS) is None
    ledger.close()
