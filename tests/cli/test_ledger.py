"""`guard ledger` and `guard holds`: open holds shown, holds in doubt resolved once with an audit event."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ledgers import Amount, Budget, Ledger
from tests.cli.conftest import guard, json_lines

BUDGET = Budget("per-session", Amount(5000, "sat"), scope="session:s1")


def in_doubt_hold(path: Path, key: str = "hash-9") -> int:
    with Ledger.open(path) as ledger:
        hold = ledger.reserve([BUDGET], Amount(300, "sat"), idempotency_key=key, session="s1", tool="l402-pay")
        ledger.mark_forwarded(hold)
        ledger.mark_in_doubt(hold)
    return hold


def test_status_lists_holds_in_doubt(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    hold = in_doubt_hold(path)
    shown = json.loads(guard("ledger", "status", "--json", "--ledger", str(path)).stdout)
    assert shown["ledger"] == str(path)
    assert [(h["id"], h["phase"], h["amount"], h["unit"], h["idempotency_key"]) for h in shown["open_holds"]] == [
        (hold, "in_doubt", 300, "sat", "hash-9")
    ]
    table = guard("ledger", "status", "--ledger", str(path)).stdout
    assert f"ledger: {path}" in table and "in_doubt" in table and "300 sat" in table


def test_status_of_a_ledger_without_holds_says_so(tmp_path: Path) -> None:
    ran = guard("ledger", "status", "--ledger", str(tmp_path / "ledger.db"))
    assert (ran.status, ran.stdout) == (0, f"ledger: {tmp_path / 'ledger.db'}\nno open holds\n")


def test_resolve_settles_a_hold_in_doubt_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    hold = in_doubt_hold(path)
    done = guard("ledger", "resolve", str(hold), "--paid", "250 sat", "--ledger", str(path))
    assert done.status == 0 and done.stdout.strip() == f"hold {hold} is settled at 250 sat"
    again = guard("ledger", "resolve", str(hold), "--paid", "250 sat", "--ledger", str(path))
    assert again.status == 1 and again.stderr == f"guard: error: hold {hold} is settled: it cannot become settled\n"
    with Ledger.open(path) as ledger:
        assert ledger.usage(BUDGET).spent == 250


def test_resolve_names_a_bad_amount(tmp_path: Path) -> None:
    ran = guard("ledger", "resolve", "1", "--paid", "1.5 sat", "--ledger", str(tmp_path / "l.db"))
    assert ran.status == 2 and "not a whole number of sat" in ran.stderr


def test_a_hold_that_does_not_exist_is_named(tmp_path: Path) -> None:
    ran = guard("ledger", "resolve", "42", "--paid", "1 sat", "--ledger", str(tmp_path / "l.db"))
    assert (ran.status, ran.stderr) == (1, "guard: error: hold 42 does not exist\n")


def test_holds_list_shows_those_in_doubt_and_resolve_writes_what_happened_in_the_audit_trail(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    paid, not_paid = in_doubt_hold(path, "hash-1"), in_doubt_hold(path, "hash-2")
    listed = json_lines(guard("holds", "list", "--in-doubt", "--json", "--ledger", str(path)).stdout)
    assert [(h["id"], h["phase"], h["tool"], h["session"], h["payment"]) for h in listed] == [
        (paid, "in_doubt", "l402-pay", "s1", "hash-1"),
        (not_paid, "in_doubt", "l402-pay", "s1", "hash-2"),
    ]
    assert guard("holds", "resolve", str(paid), "--spent", "20 sat", "--ledger", str(path)).stdout == (
        f"hold {paid} is settled at 20 sat\n"
    )
    assert guard("holds", "resolve", str(not_paid), "--void", "--ledger", str(path)).stdout == (
        f"hold {not_paid} is voided\n"
    )
    assert guard("holds", "list", "--ledger", str(path)).stdout == "no open holds\n"
    assert guard("holds", "list", "--in-doubt", "--ledger", str(path)).stdout == "no holds in doubt\n"
    with Ledger.open(path) as ledger:
        events = [(e.call.decision, e.call.hold_id, e.call.spent, e.call.reason) for e in ledger.calls(last=10)]
    assert events == [
        ("resolve", paid, Amount(20, "sat"), f"an operator resolved hold {paid}: settled at 20 sat"),
        ("resolve", not_paid, None, f"an operator resolved hold {not_paid}: voided: nothing was paid"),
    ]


@pytest.mark.parametrize(
    "flags", [["--spent", "1 sat", "--void"], [], ["--spent", "1.5 sat"]], ids=["both", "neither", "fractional"]
)
def test_holds_resolve_needs_exactly_one_of_spent_or_void(flags: list[str], tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    hold = in_doubt_hold(path)
    ran = guard("holds", "resolve", str(hold), *flags, "--ledger", str(path))
    assert ran.status == 2
    with Ledger.open(path) as ledger:
        assert ledger.hold(hold).phase == "in_doubt"
