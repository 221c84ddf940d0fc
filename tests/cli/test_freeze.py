"""`guard freeze` and `guard unfreeze` (the kill switch) on SQLite and PostgreSQL: stored in the ledger,
audited, shown by `budget show`; their flags' mistakes exit 2, unfreezing what is not frozen exits 1."""

from __future__ import annotations

import getpass
import json

from ledgers import Ledger
from tests.cli.conftest import guard


def test_freeze_stores_the_scope_reason_and_who_and_unfreeze_lifts_it(ledger_url: str) -> None:
    by = ("--by", "ops-bob")
    frozen = guard("freeze", "--identity", "alice", "--reason", "agent loops", *by, "--ledger", ledger_url)
    assert frozen.status == 0, frozen.stderr
    assert frozen.stdout.strip() == "frozen: paying calls (identity:alice), by ops-bob: agent loops"
    with Ledger.open(ledger_url, read_only=True) as ledger:
        ((scope, reason, by, all_tools),) = [(f.scope, f.reason, f.by, f.all_tools) for f in ledger.freezes()]
    assert (scope, reason, by, all_tools) == ("identity:alice", "agent loops", "ops-bob", False)
    lifted = guard("unfreeze", "--identity", "alice", "--ledger", ledger_url)
    assert lifted.status == 0, lifted.stderr
    assert lifted.stdout.strip() == "unfrozen: identity:alice (frozen by ops-bob: agent loops)"
    with Ledger.open(ledger_url, read_only=True) as ledger:
        assert ledger.freezes() == []
        events = [(e.call.decision, e.call.reason) for e in ledger.calls(last=10)]
    assert events == [("freeze", "frozen by ops-bob: agent loops"), ("unfreeze", f"unfrozen by {getpass.getuser()}")]


def test_without_by_the_freeze_names_the_os_user_and_all_tools_freezes_every_call(ledger_url: str) -> None:
    assert guard("freeze", "--all-tools", "--reason", "incident", "--ledger", ledger_url).status == 0
    with Ledger.open(ledger_url, read_only=True) as ledger:
        (freeze,) = ledger.freezes()
    assert (freeze.scope, freeze.by, freeze.all_tools) == ("global", getpass.getuser(), True)


def test_budget_show_says_what_is_frozen_by_whom_and_why(ledger_url: str) -> None:
    guard("freeze", "--session", "s9", "--all-tools", "--reason", "runaway", "--by", "ops", "--ledger", ledger_url)
    view = json.loads(guard("budget", "show", "--json", "--ledger", ledger_url).stdout)
    ((row),) = view["frozen"]
    assert {k: row[k] for k in ("scope", "refuses", "reason", "by")} == {
        "scope": "session:s9",
        "refuses": "all_tools",
        "reason": "runaway",
        "by": "ops",
    }
    plain = guard("budget", "show", "--ledger", ledger_url).stdout
    assert plain.splitlines()[0].startswith("FROZEN session:s9: every call refused since ")
    assert plain.splitlines()[0].endswith(", by ops: runaway")


def test_unfreezing_what_is_not_frozen_exits_1_and_names_what_is(ledger_url: str) -> None:
    guard("freeze", "--identity", "bob", "--reason", "r", "--ledger", ledger_url)
    refused = guard("unfreeze", "--ledger", ledger_url)
    assert refused.status == 1
    assert refused.stderr.strip() == "guard: error: global is not frozen; frozen: identity:bob"


def test_a_freeze_without_a_reason_or_with_two_scopes_exits_2_and_stores_nothing(ledger_url: str) -> None:
    assert guard("freeze", "--ledger", ledger_url).status == 2  # --reason is required (Click's usage error)
    both = guard("freeze", "--identity", "a", "--session", "s", "--reason", "r", "--ledger", ledger_url)
    assert (both.status, both.stderr.strip()) == (2, "guard: error: give --identity or --session, not both")
    empty = guard("freeze", "--identity", " ", "--reason", "r", "--ledger", ledger_url)
    assert (empty.status, empty.stderr.strip()) == (2, "guard: error: --identity: expected a name, got an empty string")
    with Ledger.open(ledger_url, read_only=True) as ledger:
        assert ledger.freezes() == []


def test_a_blank_reason_is_refused(ledger_url: str) -> None:
    blank = guard("freeze", "--reason", "   ", "--ledger", ledger_url)
    assert blank.status == 1
    assert "a freeze needs a reason" in blank.stderr
