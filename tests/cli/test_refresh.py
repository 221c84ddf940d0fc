"""`guard refresh`: the upstream and the policy checked before the ledger opens; a count of what answered.
(A refresh that stores an upstream's balance is tests/e2e/test_reconciliation.py's.)"""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import guard
from tests.conftest import DUAL_ERA


def test_no_upstream_exits_2_and_opens_no_ledger(tmp_path: Path) -> None:
    ran = guard("refresh", "--ledger", str(tmp_path / "ledger.db"))
    assert ran.status == 2 and ran.stderr.startswith("guard: error: no upstream")
    assert not (tmp_path / "ledger.db").exists()


def test_a_command_that_cannot_start_exits_3(tmp_path: Path) -> None:
    ran = guard("refresh", "--ledger", str(tmp_path / "ledger.db"), "--", "no-such-mcp-server")
    assert ran.status == 3 and "command not found: no-such-mcp-server" in ran.stderr


def test_a_ledger_that_knows_no_balance_has_none_to_refresh(tmp_path: Path) -> None:
    ran = guard("refresh", "--all", "--ledger", str(tmp_path / "ledger.db"), "--", *DUAL_ERA)
    assert (ran.status, ran.stdout) == (0, "refreshed 0 balances\n")
