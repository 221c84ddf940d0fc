"""Policy enforcement end to end: a real guard process (stdio) in front of a fake paying upstream, spoken
to in raw JSON-RPC lines so the wire format itself is checked, with a real SQLite ledger file: a denial on
the wire, an upstream that dies mid-payment, approvals decided with `guard approvals`, hot reload of the
policy file (and the client told its tools changed), the audit trail as `guard audit tail` shows it.

The gate's checklist itself runs in process: tests/gate/."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ledgers import Ledger
from tests.conftest import GUARD, ROOT, WAIT_S
from tests.rawguard import RawGuard

SHOP = [sys.executable, str(ROOT / "tests/upstreams/shop.py")]
DENIAL_FIELDS = {"denied", "rule", "reason", "remaining", "unit", "retry_after_s", "approval_id"}

POLICY = """\
version: 1
default: deny
budgets:
  - name: per-session
    limit: 100 sat
    scope: session
tools:
  buy:
    pays: true
    price_from: args.amount
    price_unit: sat
    max_price: 60 sat
    when:
      - arg: item
        matches: '^[a-z]+$'
        reason: items are lower-case words
  die:
    pays: true
    price: 30 sat
  refuse:
    pays: true
    price: 30 sat
  browse:
    rate_limit: 2/minute
"""


class ShopGuard(RawGuard):
    """A RawGuard in front of tests/upstreams/shop.py, which records what it was paid (SHOP_RECORD)."""

    def __init__(self, tmp: Path, policy: Path, **options: Any) -> None:
        self.record = tmp / "shop-record.jsonl"
        super().__init__(tmp, policy, upstream=SHOP, env={"SHOP_RECORD": str(self.record)}, **options)

    def paid_by_shop(self) -> int:
        if not self.record.exists():
            return 0
        return sum(json.loads(line)["amount"] for line in self.record.read_text().splitlines())


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


@pytest.fixture
def guard(tmp_path: Path, policy_file: Path) -> Iterator[ShopGuard]:
    running = ShopGuard(tmp_path, policy_file)
    yield running
    running.stop()


def denial(result: dict[str, Any]) -> dict[str, Any]:
    assert result["isError"] is True
    assert result["content"][0]["text"].startswith("Denied by guard: ")
    assert set(result["structuredContent"]) == DENIAL_FIELDS
    assert result["structuredContent"]["denied"] is True
    return result["structuredContent"]  # type: ignore[no-any-return]


def test_a_denial_is_a_tool_result_with_is_error_a_readable_first_line_and_machine_fields(guard: ShopGuard) -> None:
    raw = guard.raw_request("tools/call", {"name": "buy", "arguments": {"item": "Tea", "amount": 10}})

    assert b'"isError":true' in raw
    message = json.loads(raw)
    assert set(message) == {"jsonrpc", "id", "result"}
    text = message["result"]["content"][0]["text"]
    assert text == "Denied by guard: items are lower-case words (rule tools.buy.when[0])"
    assert message["result"]["structuredContent"] == {
        "denied": True,
        "rule": "tools.buy.when[0]",
        "reason": "items are lower-case words",
        "remaining": None,
        "unit": None,
        "retry_after_s": None,
        "approval_id": None,
    }
    assert guard.paid_by_shop() == 0


def test_an_upstream_that_dies_mid_payment_leaves_the_hold_in_doubt_and_counted(guard: ShopGuard) -> None:
    answer = guard.request("tools/call", {"name": "die", "arguments": {"amount": 30}})
    guard.stop()

    assert "exited with status 9" in answer["error"]["message"]
    with Ledger.open(guard.ledger) as ledger:
        [hold] = ledger.open_holds()
    assert (hold.phase, hold.amount.value) == ("in_doubt", 30)
    assert guard.paid_by_shop() == 30


def test_an_approval_is_single_use_and_bound_to_the_exact_arguments(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("  browse:\n    rate_limit: 2/minute\n", "  browse:\n    action: approve\n"))
    guard = ShopGuard(tmp_path, policy)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [*GUARD, "approvals", *args, "--ledger", str(guard.ledger)]
        return subprocess.run(command, capture_output=True, text=True, timeout=WAIT_S)

    try:
        first = denial(guard.call("browse", q="shoes"))
        again = denial(guard.call("browse", q="shoes"))
        [waiting] = [json.loads(line) for line in cli("list", "--json").stdout.splitlines()]
        approved = cli("approve", first["approval_id"])
        other = denial(guard.call("browse", q="hats"))
        allowed = guard.call("browse", q="shoes")
        used = denial(guard.call("browse", q="shoes"))
        twice = cli("approve", first["approval_id"])
    finally:
        guard.stop()

    assert first["approval_id"].startswith("ap_") and again["approval_id"] == first["approval_id"]
    assert f"guard approvals approve {first['approval_id']}" in first["reason"]
    assert (waiting["id"], waiting["tool"], waiting["state"]) == (first["approval_id"], "browse", "pending")
    assert approved.returncode == 0, approved.stderr
    assert other["approval_id"] != first["approval_id"]
    assert allowed["isError"] is False
    assert used["approval_id"] not in (None, first["approval_id"])
    assert twice.returncode == 1 and "already" in twice.stderr


def test_a_denied_approval_refuses_the_retry(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("  browse:\n    rate_limit: 2/minute\n", "  browse:\n    action: approve\n"))
    guard = ShopGuard(tmp_path, policy)
    try:
        asked = denial(guard.call("browse", q="shoes"))
        subprocess.run(
            [*GUARD, "approvals", "deny", asked["approval_id"], "--ledger", str(guard.ledger)],
            check=True,
            capture_output=True,
            timeout=WAIT_S,
        )
        retried = denial(guard.call("browse", q="shoes"))
    finally:
        guard.stop()
    assert retried["reason"] == "the operator denied this call to browse"
    assert retried["approval_id"] == asked["approval_id"]


def test_a_valid_edit_takes_effect_and_tells_the_client_its_tools_changed(guard: ShopGuard, policy_file: Path) -> None:
    assert guard.call("browse")["isError"] is False
    guard.request("tools/list")
    policy_file.write_text(POLICY.replace("  browse:\n    rate_limit: 2/minute\n", "  browse:\n    action: deny\n"))

    guard.wait_for_notification("notifications/tools/list_changed")
    listed = [tool["name"] for tool in guard.request("tools/list")["result"]["tools"]]
    assert listed == ["buy", "die", "refuse"]
    assert denial(guard.call("browse"))["rule"] == "tools.browse"


def test_an_invalid_edit_is_refused_and_the_previous_policy_and_counters_stay(
    guard: ShopGuard, policy_file: Path
) -> None:
    assert guard.call("browse")["isError"] is False
    policy_file.write_text(POLICY.replace("2/minute", "2/fortnight"))
    line = guard.wait_for_stderr("not reloaded")
    assert guard.wait_for_stderr("tools.browse.rate_limit: expected a rate")
    assert "previous policy stays" in line
    assert guard.call("browse")["isError"] is False
    assert denial(guard.call("browse"))["rule"] == "tools.browse.rate_limit"

    # A valid edit that loosens the limit keeps the count: 2 used of 3.
    policy_file.write_text(POLICY.replace("2/minute", "3/minute"))
    guard.wait_for_stderr(f"policy {policy_file} reloaded")
    assert guard.call("browse")["isError"] is False
    assert denial(guard.call("browse"))["rule"] == "tools.browse.rate_limit"


def test_every_decision_is_in_the_audit_trail_without_the_arguments(guard: ShopGuard) -> None:
    macaroon = "AgEEbHNhdAJCAADo3kx9aPQrstuvwxyzABCDEFGH12345678QRSTUVWXYZ"
    guard.call("buy", item="tea", amount=5)
    guard.call("buy", item=macaroon, amount=5)
    guard.request("tools/call", {"name": "refuse", "arguments": {"amount": 1}})
    guard.stop()

    tail = subprocess.run(
        [*GUARD, "audit", "tail", "--json", "--ledger", str(guard.ledger)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )
    events = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [(e["tool"], e["decision"]) for e in events] == [("buy", "allow"), ("buy", "deny"), ("refuse", "error")]
    assert events[0]["spent"] == 5 and events[0]["spent_unit"] == "sat" and events[0]["session"] == "s1"
    assert events[1]["rule"] == "tools.buy.when[0]"
    assert all(len(e["arguments_digest"]) == 16 for e in events)
    assert macaroon not in tail.stdout
    assert macaroon not in "\n".join(guard.stderr)
