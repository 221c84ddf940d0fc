"""`guard ledger` shows open holds and resolves the ones in doubt; `guard run` needs a usable ledger."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from ledgers import Amount, Budget, Ledger
from tests.conftest import GUARD, WAIT_S

BUDGET = Budget("per-session", Amount(5000, "sat"), scope="session:s1")


def guard(*args: str, ledger: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"GUARD_LEDGER": str(ledger)} if ledger else {})}
    return subprocess.run([*GUARD, *args], capture_output=True, text=True, timeout=WAIT_S, env=env)


def in_doubt_hold(path: Path) -> int:
    with Ledger.open(path) as ledger:
        hold = ledger.reserve([BUDGET], Amount(300, "sat"), idempotency_key="hash-9")
        ledger.mark_forwarded(hold)
        ledger.mark_in_doubt(hold)
    return hold


def test_status_lists_holds_in_doubt(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    hold = in_doubt_hold(path)
    shown = json.loads(guard("ledger", "status", "--json", ledger=path).stdout)
    assert shown["ledger"] == str(path)
    assert [(h["id"], h["phase"], h["amount"], h["unit"], h["idempotency_key"]) for h in shown["open_holds"]] == [
        (hold, "in_doubt", 300, "sat", "hash-9")
    ]
    assert "in_doubt" in guard("ledger", "status", ledger=path).stdout


def test_resolve_settles_a_hold_in_doubt_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    hold = in_doubt_hold(path)
    done = guard("ledger", "resolve", str(hold), "--paid", "250 sat", ledger=path)
    assert done.returncode == 0 and done.stdout.strip() == f"hold {hold} is settled at 250 sat"
    again = guard("ledger", "resolve", str(hold), "--paid", "250 sat", ledger=path)
    assert again.returncode == 1 and f"hold {hold} is settled: it cannot become settled" in again.stderr
    with Ledger.open(path) as ledger:
        assert ledger.usage(BUDGET).spent == 250


def test_resolve_names_a_bad_amount(tmp_path: Path) -> None:
    result = guard("ledger", "resolve", "1", "--paid", "1.5 sat", ledger=tmp_path / "l.db")
    assert result.returncode == 2 and "not a whole number of sat" in result.stderr


def test_a_guard_whose_ledger_cannot_be_opened_does_not_start(tmp_path: Path) -> None:
    result = guard("run", "--ledger", "postgresql+psycopg://guard:pw@127.0.0.1:1/none", "--", "true")
    assert result.returncode == 4
    assert "guard: error: ledger: cannot open the ledger at postgresql+psycopg://guard:***@127.0.0.1:1/none" in (
        result.stderr
    )
