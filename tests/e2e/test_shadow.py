"""Shadow mode end to end: a real `guard run` in front of the fake 402-mcp (tests/upstreams/fake_402mcp.py),
spoken to over stdio in raw JSON-RPC, then `guard budget show` and `guard report` run as commands of their
own on its ledger. The policy is `mode: shadow`: a purchase over the session budget is forwarded and paid, the
ledger counts it (the budget goes over its limit), budget show marks the budget shadowed and how far over it
is, and the report lists the would-denial with the money it would have kept. A tool the policy denies is
forwarded too; the warning at start says what is shadowed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ledgers import Ledger
from tests.conftest import GUARD, ROOT, WAIT_S
from tests.e2e.helpers import body, site
from tests.rawguard import RawGuard

FAKE = ROOT / "tests" / "upstreams" / "fake_402mcp.py"

POLICY = """\
version: 1
default: deny
mode: shadow
budgets:
  - {name: per-session, limit: 15 sat, scope: session}
tools:
  l402-fetch:
    pays: true
    max_price: 50 sat
"""


def guard_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GUARD, *args], capture_output=True, text=True, timeout=WAIT_S, check=False)


def test_in_shadow_mode_a_purchase_over_the_budget_is_forwarded_paid_counted_shown_over_and_reported(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    state = tmp_path / "fake-state.json"
    state.write_text(json.dumps({"prices": {site(1): 10, site(2): 10}}))
    guard = RawGuard(tmp_path, policy, upstream=[sys.executable, str(FAKE)], env={"FAKE_STATE": str(state)})
    try:
        assert "shadow mode: the whole policy (mode: shadow)" in guard.wait_for_stderr("shadow mode")
        assert body(guard.call("l402-fetch", {"url": site(1), "autoPay": True}))["satsPaid"] == 10
        over = guard.call("l402-fetch", {"url": site(2), "autoPay": True})
        assert not (over.get("structuredContent") or {}).get("denied")
        assert body(over)["satsPaid"] == 10  # forwarded and paid: shadow mode breaks no agent
        previewed = guard.call("l402-fetch-preview", {"url": site(1)})  # default deny, shadowed: forwarded
        assert body(previewed)["costSats"] == 10
    finally:
        guard.stop()
    assert [p["url"] for p in json.loads(state.read_text())["payments"]] == [site(1), site(2)]

    with Ledger.open(tmp_path / "ledger.db", recover=False) as ledger:
        calls = [e.call for e in ledger.calls(last=10) if e.call.tool != "tools/list"]
    would = [(c.tool, c.rule, c.kind) for c in calls if c.decision == "would_deny"]
    assert sorted(would) == [
        ("l402-fetch", "budgets.per-session", "budget"),
        ("l402-fetch-preview", "default", "default"),
    ]

    shown = guard_command("budget", "show", "--json", "--ledger", str(tmp_path / "ledger.db"), "--policy", str(policy))
    assert shown.returncode == 0, shown.stderr
    [budget] = json.loads(shown.stdout)["budgets"]
    assert (budget["shadow"], budget["spent"], budget["over"], budget["unit"]) == (True, 20, 5, "sat")
    plain = guard_command("budget", "show", "--ledger", str(tmp_path / "ledger.db"), "--policy", str(policy))
    assert "per-session (shadow, 5 sat over)" in plain.stdout

    report = guard_command("report", "--format", "json", "--ledger", str(tmp_path / "ledger.db"))
    assert report.returncode == 0, report.stderr
    by_rule = {d["rule"]: d for d in json.loads(report.stdout)["would_denials"]}
    assert by_rule["budgets.per-session"]["count"] == 1
    assert by_rule["budgets.per-session"]["kept"] == [{"unit": "sat", "amount": 10}]
    assert by_rule["default"]["kept"] == []
