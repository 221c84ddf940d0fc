"""Reconciling what the guard counted with what happened, end to end: `guard holds list|resolve` (a
human), `guard refresh` (for cron), and the guard's own balance refresh in the 2026-07-28 era; on real
ledger files, with fake upstreams. Proofs in later answers, balance moves, external spend and top-ups
run in process: tests/payments/test_reconcile.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters

from ledgers import Amount, BalanceObservation, Budget, Ledger
from tests.cli.conftest import plain
from tests.conftest import GUARD, ROOT, WAIT_S

FAKE_P402 = [sys.executable, str(ROOT / "tests/upstreams/fake_p402.py")]
SESSION = "sess_0123456789abcdef01234567"


class PastClock:
    def now(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC)


def guard(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GUARD, *args], capture_output=True, text=True, timeout=WAIT_S, env={**os.environ, **(env or {})}
    )


def in_doubt_holds(path: Path) -> tuple[int, int]:
    budget = Budget("b", Amount(1000, "sat"))
    with Ledger.open(path) as ledger:
        holds = []
        for amount in (30, 40):
            hold = ledger.reserve([budget], Amount(amount, "sat"), session="s1", tool="l402-pay")
            ledger.mark_forwarded(hold)
            ledger.mark_in_doubt(hold)
            holds.append(hold)
    return holds[0], holds[1]


def test_a_human_lists_holds_in_doubt_and_resolves_them_with_an_audit_event(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    paid, not_paid = in_doubt_holds(path)

    listed = [
        json.loads(line)
        for line in guard("holds", "list", "--in-doubt", "--json", "--ledger", str(path)).stdout.splitlines()
    ]
    settled = guard("holds", "resolve", str(paid), "--spent", "20 sat", "--ledger", str(path))
    voided = guard("holds", "resolve", str(not_paid), "--void", "--ledger", str(path))
    again = guard("holds", "resolve", str(paid), "--void", "--ledger", str(path))
    audit = [json.loads(line) for line in guard("audit", "tail", "--json", "--ledger", str(path)).stdout.splitlines()]

    assert [(h["id"], h["phase"], h["amount"], h["tool"], h["session"]) for h in listed] == [
        (paid, "in_doubt", 30, "l402-pay", "s1"),
        (not_paid, "in_doubt", 40, "l402-pay", "s1"),
    ]
    assert settled.returncode == 0 and settled.stdout.strip() == f"hold {paid} is settled at 20 sat"
    assert voided.returncode == 0 and voided.stdout.strip() == f"hold {not_paid} is voided"
    assert again.returncode == 1 and f"hold {paid} is settled: it cannot become voided" in again.stderr
    assert [(e["decision"], e["hold"], e["spent"]) for e in audit] == [
        ("resolve", paid, 20),
        ("resolve", not_paid, None),
    ]
    with Ledger.open(path) as ledger:
        assert ledger.usage(Budget("b", Amount(1000, "sat"))).spent == 20
        assert ledger.open_holds() == []


def test_resolving_needs_exactly_one_of_spent_or_void(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    hold, _ = in_doubt_holds(path)
    both = guard("holds", "resolve", str(hold), "--spent", "1 sat", "--void", "--ledger", str(path))
    neither = guard("holds", "resolve", str(hold), "--ledger", str(path))
    fractional = guard("holds", "resolve", str(hold), "--spent", "1.5 sat", "--ledger", str(path))
    assert both.returncode == neither.returncode == fractional.returncode == 2
    assert "exactly one of --spent AMOUNT or --void" in plain(both.stderr)
    assert "not a whole number of sat" in plain(fractional.stderr)


def test_guard_refresh_asks_the_upstream_for_a_due_balance_and_stores_the_answer(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path, clock=PastClock()) as ledger:
        ledger.observe(
            BalanceObservation("p402_get_session", f"p402:{SESSION}", Amount(5_000_000, "usd_micro"), "active")
        )
    state = tmp_path / "p402.json"
    expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    session = {"id": SESSION, "status": "active", "total_usd": 5.0, "used_usd": 1.25, "expires_at": expires}
    state.write_text(json.dumps({"sessions": {SESSION: session}}))
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\npreset: p402\nbalances: {refresh_every: 1m}\n")

    done = guard(
        "refresh", "--policy", str(policy), "--ledger", str(path), "--", *FAKE_P402, env={"FAKE_STATE": str(state)}
    )
    again = guard(
        "run",
        "--refresh-only",
        "--policy",
        str(policy),
        "--ledger",
        str(path),
        "--",
        *FAKE_P402,
        env={"FAKE_STATE": str(state)},
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refreshed 1 balance"
    assert again.returncode == 0 and again.stdout.strip() == "refreshed 0 balances"  # now fresh: not due
    with Ledger.open(path) as ledger:
        found = ledger.latest(f"p402:{SESSION}")
    assert found is not None
    observation, age = found
    assert (observation.amount, observation.status) == (Amount(3_750_000, "usd_micro"), "active")
    assert age < WAIT_S


async def _chat_in_the_2026_era(tmp_path: Path, policy: Path, state: Path) -> Any:
    guard_command = [
        "run", "--policy", str(policy), "--ledger", str(tmp_path / "ledger.db"), "--", *FAKE_P402,
    ]  # fmt: skip
    server = StdioServerParameters(
        command=GUARD[0], args=[*GUARD[1:], *guard_command], env={**os.environ, "FAKE_STATE": str(state)}
    )
    async with Client(server, mode="auto") as client:  # auto: the 2026-07-28 era, no initialize
        return await client.call_tool("p402_chat", {"message": "hi", "session_id": SESSION})


def test_in_the_2026_era_the_guards_own_balance_refresh_carries_the_request_envelope(tmp_path: Path) -> None:
    state = tmp_path / "p402.json"
    expires = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    session = {"id": SESSION, "status": "active", "total_usd": 5.0, "used_usd": 1.0, "expires_at": expires}
    state.write_text(json.dumps({"sessions": {SESSION: session}}))
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\npreset: p402\nbalances: {on_stale: refresh}\n")

    async def run() -> Any:
        with anyio.fail_after(WAIT_S):
            return await _chat_in_the_2026_era(tmp_path, policy, state)

    result = anyio.run(run)

    assert result.is_error is False
    with Ledger.open(tmp_path / "ledger.db") as ledger:
        found = ledger.latest(f"p402:{SESSION}")
    assert found is not None  # refreshed before the chat was admitted (the session was unknown)
    assert (found[0].amount, found[0].status) == (Amount(4_000_000, "usd_micro"), "active")
