"""`guard demo`: the README's first command shows a payment admitted, one denied, and the budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledgers import Ledger
from tests.cli.conftest import guard


def test_the_demo_admits_one_payment_denies_the_next_and_shows_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # anywhere, not only in a checkout
    shown = guard("demo", "--dir", str(tmp_path))

    assert shown.status == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:2] == [f"policy {tmp_path / 'policy.yaml'}", f"ledger {tmp_path / 'ledger.db'}"]
    bought = [line for line in lines if "buy the" in line]
    assert bought[0].startswith("ok ") and "satsPaid: 60" in bought[0]
    assert bought[1].startswith("DENIED ") and "80 sat asked, 40 sat left of 100" in bought[1]
    assert "$ guard budget show --ledger" in shown.stdout
    [session_budget] = [line for line in lines if line.startswith("per-session")]
    # unit, limit, spent, held, in doubt, remaining
    assert session_budget.split()[4:10] == ["sat", "100", "60", "0", "0", "40"]
    with Ledger.open(tmp_path / "ledger.db") as ledger:
        decisions = [(e.call.tool, e.call.decision) for e in ledger.calls(last=10)]
    assert decisions.count(("l402-fetch", "allow")) == 1 and decisions.count(("l402-fetch", "deny")) == 1
