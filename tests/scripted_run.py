"""A scripted run through real guards, for golden tests of operators' views (`guard report`, `guard budget
show --json`): `scripted_run(directory)` leaves a ledger as real `guard run` processes wrote it, and
returns what the fake upstreams themselves say was paid, to cross-check sums against.

Every step is a real `guard run --ledger DIR/ledger.db --session S --identity I -- python <fake>` over
stdio (RawGuard), one after the other, sharing the ledger; every 402-mcp guard has a fake of its own
(its own FAKE_STATE file, so no credential carries over). The policies are
tests/fixtures/policies/report-alby.yaml and report-402mcp.yaml.

1. carol-1 (identity carol), fake Alby. The wallet was last seen two hours ago at 100 000 sat (seeded
   into the ledger first), so paying a 25 sat invoice is refused (`balances.stale_after`). Then
   get_balance says 99 000 sat: 1 000 sat spent another way (external). The invoice is paid (25 sat);
   get_balance says 98 975 (explained); the wallet is topped up by 500 sat behind the guard's back;
   get_balance says 99 475 (a top-up).
2. alice-1 (identity alice), fake 402-mcp: previews, then pays WEATHER (30 sat) and CHAT, whose price
   went from 20 to 25 sat after the preview: 25 sat paid on a 20 sat reservation (an over-reservation).
3. bob-1 (identity bob), fake 402-mcp: three previews, a fourth is refused (`tools.l402-fetch-preview.
   rate_limit`, 3/minute); pays WEATHER (30), EMBED (40: the fake answers `unknown`, the hold stays in
   doubt), CHAT (20); then RADAR (guard previews it itself: 15 sat do not fit the 10 sat left) is
   refused (`budgets.per-session`).

So the fakes were paid 30 + 25 + 30 + 40 + 20 = 145 sat by 402-mcp (40 of it reported `unknown`) and
25 sat by Alby; the wallet shows 1 000 sat spent elsewhere and a 500 sat top-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bolt11

from ledgers import Amount, BalanceObservation, Ledger
from tests.conftest import FIXTURES, ROOT
from tests.rawguard import RawGuard

JSON = dict[str, Any]
UPSTREAMS = ROOT / "tests" / "upstreams"
POLICY_402MCP = FIXTURES / "policies" / "report-402mcp.yaml"
POLICY_ALBY = FIXTURES / "policies" / "report-alby.yaml"

WEATHER = "https://weather.example/forecast"
RADAR = "https://weather.example/radar"
CHAT = "https://llm.example/v1/chat"
EMBED = "https://llm.example/v1/embed"
PRICES = {WEATHER: 30, CHAT: 20, EMBED: 40, RADAR: 15}
CHAT_RAISED = 25  # CHAT's price when alice fetches it, after her preview said 20
SESSIONS = {"carol-1": "carol", "alice-1": "alice", "bob-1": "bob"}  # session: identity
WALLET = "wallet:alby"
WALLET_SEEN = 100_000  # sat, two hours before the run
EXTERNAL_SPEND = 1_000  # sat the wallet lost before the guard saw it again
INVOICE_SATS = 25
TOPUP = 500


@dataclass(frozen=True)
class ScriptedRun:
    """What a scripted run left: the ledger file, and every payment the fakes recorded (their FAKE_STATE
    `payments`: {tool, amount, unit, reported ("paid" or "unknown"), url, ...}), in the order made."""

    ledger: Path
    payments: list[JSON]
    sessions: dict[str, str]  # session: identity

    def paid(self, reported: str = "paid") -> int:
        """Sat the fakes recorded as paid with this report to the client ("paid" or "unknown")."""
        return sum(p["amount"] for p in self.payments if p["reported"] == reported and p["unit"] == "sat")


def scripted_run(directory: Path) -> ScriptedRun:
    """Run the script above in `directory` (an empty one: its ledger.db, policies' fakes' state files)."""
    directory.mkdir(parents=True, exist_ok=True)
    _seed(directory / "ledger.db", BalanceObservation("get_balance", WALLET, Amount(WALLET_SEEN, "sat"), money=True))
    payments = _carol(directory)
    payments += _alice(directory)
    payments += _bob(directory)
    return ScriptedRun(directory / "ledger.db", payments, dict(SESSIONS))


class _Guard(RawGuard):
    """A RawGuard in `directory` in front of `fake` with its own state file."""

    def __init__(self, directory: Path, fake: str, policy: Path, session: str, state: JSON) -> None:
        self.state_file = directory / f"{fake}-{session}.json"
        self.state_file.write_text(json.dumps(state))
        super().__init__(
            directory,
            policy,
            upstream=[sys.executable, str(UPSTREAMS / f"{fake}.py")],
            session=session,
            extra=("--identity", SESSIONS[session]),
            env={"FAKE_STATE": str(self.state_file)},
        )

    def state(self) -> JSON:
        return json.loads(self.state_file.read_text())  # type: ignore[no-any-return]

    def edit_state(self, **changes: Any) -> None:
        """Change the fake's state between calls (written atomically, as the fake writes it)."""
        state = {**self.state(), **changes}
        temporary = self.state_file.with_suffix(".edit")
        temporary.write_text(json.dumps(state))
        os.replace(temporary, self.state_file)

    def checked(self, name: str, arguments: JSON, *, denied_by: str | None = None) -> JSON:
        """Call a tool; fail unless it was denied by exactly `denied_by` (None: not denied)."""
        result = self.call(name, arguments)
        rule = (result.get("structuredContent") or {}).get("rule") if _denied(result) else None
        if rule != denied_by:
            self.stop()
            raise AssertionError(f"{name} {arguments}: expected denial by {denied_by}, got {result}")
        return result


def _denied(result: JSON) -> bool:
    return bool((result.get("structuredContent") or {}).get("denied"))


def _carol(directory: Path) -> list[JSON]:
    guard = _Guard(directory, "fake_alby", POLICY_ALBY, "carol-1", {"wallet_sats": WALLET_SEEN - EXTERNAL_SPEND})
    try:
        invoice = _invoice(INVOICE_SATS)
        guard.checked("pay_invoice", {"invoice": invoice}, denied_by="balances.stale_after")
        guard.checked("get_balance", {})
        guard.checked("pay_invoice", {"invoice": invoice})
        guard.checked("get_balance", {})
        guard.edit_state(wallet_sats=guard.state()["wallet_sats"] + TOPUP)
        guard.checked("get_balance", {})
    finally:
        guard.stop()
    return list(guard.state()["payments"])


def _fake_402(directory: Path, session: str) -> _Guard:
    state = {"prices": PRICES, "outcomes": {EMBED: "unknown"}}
    return _Guard(directory, "fake_402mcp", POLICY_402MCP, session, state)


def _alice(directory: Path) -> list[JSON]:
    guard = _fake_402(directory, "alice-1")
    try:
        for url in (WEATHER, CHAT):
            guard.checked("l402-fetch-preview", {"url": url})
        guard.edit_state(prices={**PRICES, CHAT: CHAT_RAISED})
        for url in (WEATHER, CHAT):
            guard.checked("l402-fetch", {"url": url, "autoPay": True})
    finally:
        guard.stop()
    return list(guard.state()["payments"])


def _bob(directory: Path) -> list[JSON]:
    guard = _fake_402(directory, "bob-1")
    try:
        for url in (WEATHER, EMBED, CHAT):
            guard.checked("l402-fetch-preview", {"url": url})
        guard.checked("l402-fetch-preview", {"url": RADAR}, denied_by="tools.l402-fetch-preview.rate_limit")
        for url in (WEATHER, EMBED, CHAT):
            guard.checked("l402-fetch", {"url": url, "autoPay": True})
        guard.checked("l402-fetch", {"url": RADAR, "autoPay": True}, denied_by="budgets.per-session")
    finally:
        guard.stop()
    return list(guard.state()["payments"])


@dataclass(frozen=True)
class _At:
    moment: datetime

    def now(self) -> datetime:
        return self.moment


def _seed(ledger: Path, observation: BalanceObservation) -> None:
    """The wallet as a guard saw it two hours ago (into a new ledger: stored times never go backwards)."""
    with Ledger.open(ledger, clock=_At(datetime.now(UTC) - timedelta(hours=2))) as opened:
        opened.observe(observation)


def _invoice(sats: int) -> str:
    """A real BOLT11 invoice for `sats` from someone else's node."""
    tags = bolt11.Tags()
    tags.add(bolt11.TagChar.payment_hash, hashlib.sha256(os.urandom(32)).hexdigest())
    tags.add(bolt11.TagChar.payment_secret, os.urandom(32).hex())
    tags.add(bolt11.TagChar.description, "scripted run")
    invoice = bolt11.Bolt11(
        currency="bc", date=int(datetime.now(UTC).timestamp()), tags=tags, amount_msat=bolt11.MilliSatoshi(sats * 1000)
    )
    return bolt11.encode(invoice, private_key="33" * 32)  # type: ignore[no-any-return]


__all__ = [
    "CHAT",
    "CHAT_RAISED",
    "EMBED",
    "EXTERNAL_SPEND",
    "INVOICE_SATS",
    "POLICY_402MCP",
    "POLICY_ALBY",
    "RADAR",
    "SESSIONS",
    "TOPUP",
    "WALLET",
    "WALLET_SEEN",
    "WEATHER",
    "ScriptedRun",
    "scripted_run",
]
