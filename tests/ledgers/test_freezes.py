"""The kill switch in the ledger: a freeze per scope, audited with its call event in one transaction, read by
a reservation in its own transaction (SQLite file and PostgreSQL)."""

from __future__ import annotations

import pytest

from ledgers import Amount, Budget, Freeze, Frozen, Ledger, LedgerError, RateLimit, Window
from tests.ledgers.conftest import FakeClock

BUDGET = Budget("per-session", Amount(1000, "sat"), scope="session:s1")
ALICE = ("global", "identity:alice", "session:s1")


def test_a_frozen_scope_refuses_a_reservation_naming_the_reason_and_who_froze_and_writes_nothing(
    ledger: Ledger,
) -> None:
    ledger.freeze("identity:alice", reason="agent loops on invoices", by="ops-bob")
    with pytest.raises(Frozen) as refused:
        ledger.reserve([BUDGET], Amount(10, "sat"), frozen_scopes=ALICE)
    assert refused.value.rule == "identity:alice"
    assert str(refused.value) == (
        "paying calls frozen for identity alice by ops-bob: agent loops on invoices"
        " (until `guard unfreeze --identity alice`)"
    )
    assert ledger.usage(BUDGET).held == 0
    assert ledger.open_holds() == []


def test_a_freeze_of_another_scope_does_not_stop_the_caller(ledger: Ledger) -> None:
    ledger.freeze("identity:mallory", reason="r", by="ops")
    ledger.freeze("session:s2", reason="r", by="ops")
    hold = ledger.reserve([BUDGET], Amount(10, "sat"), frozen_scopes=ALICE)
    assert ledger.hold(hold).phase == "reserved"


def test_a_global_freeze_stops_every_scope_and_unfreezing_lets_the_next_reservation_through(ledger: Ledger) -> None:
    ledger.freeze("global", reason="incident 42", by="ops", all_tools=True)
    with pytest.raises(Frozen, match="every call frozen by ops: incident 42 \\(until `guard unfreeze`\\)"):
        ledger.reserve([BUDGET], Amount(10, "sat"), frozen_scopes=ALICE)
    lifted = ledger.unfreeze("global", by="ops")
    assert lifted is not None and lifted.all_tools
    assert ledger.freezes() == []
    ledger.reserve([BUDGET], Amount(10, "sat"), frozen_scopes=ALICE)


def test_freezing_twice_replaces_the_freeze_and_unfreezing_what_is_not_frozen_says_so(
    ledger: Ledger, clock: FakeClock
) -> None:
    ledger.freeze("session:s1", reason="first", by="a")
    ledger.freeze("session:s1", reason="second", by="b", all_tools=True)
    assert ledger.freezes() == [Freeze("session:s1", "second", "b", clock.now(), all_tools=True)]
    assert ledger.unfreeze("session:s1", by="c") is not None
    assert ledger.unfreeze("session:s1", by="c") is None


def test_freezing_and_unfreezing_are_call_events_with_who_and_why(ledger: Ledger) -> None:
    ledger.freeze("identity:alice", reason="runaway agent", by="ops-bob")
    ledger.unfreeze("identity:alice", by="ops-carol")
    events = [e.call for e in ledger.calls(last=10)]
    assert [(e.decision, e.kind, e.rule, e.identity, e.reason) for e in events] == [
        ("freeze", "freeze", "freeze.identity:alice", "alice", "frozen by ops-bob: runaway agent"),
        ("unfreeze", "freeze", "freeze.identity:alice", "alice", "unfrozen by ops-carol"),
    ]


@pytest.mark.parametrize("scope", ["", "everyone", "identity:", "session", "wallet:x"])
def test_a_scope_that_is_not_global_an_identity_or_a_session_is_refused(ledger: Ledger, scope: str) -> None:
    with pytest.raises(LedgerError, match="expected global, identity:<name> or session:<id>"):
        ledger.freeze(scope, reason="r", by="ops")
    assert ledger.freezes() == []


def test_a_freeze_needs_a_reason(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="needs a reason"):
        ledger.freeze("global", reason="  ", by="ops")


def test_a_freeze_is_checked_before_the_rate_limits_and_counts_nothing(ledger: Ledger) -> None:
    rate = RateLimit("calls:buy/1m@session:s1", 5, Window.sliding("1m"))
    ledger.freeze("session:s1", reason="r", by="ops")
    with pytest.raises(Frozen):
        ledger.reserve([BUDGET], Amount(10, "sat"), rate_limits=[rate], frozen_scopes=ALICE)
    assert ledger.count(rate.key, rate.window) == 0


def test_a_freeze_written_through_one_ledger_refuses_the_next_reservation_through_another(ledger_url: str) -> None:
    """Two guards on one database: the freeze is read in the reservation's transaction, never from a cache."""
    with Ledger.open(ledger_url) as first, Ledger.open(ledger_url) as second:
        second.reserve([BUDGET], Amount(1, "sat"), frozen_scopes=ALICE)
        first.freeze("global", reason="stop", by="ops")
        with pytest.raises(Frozen):
            second.reserve([BUDGET], Amount(1, "sat"), frozen_scopes=ALICE)
