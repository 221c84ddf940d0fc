"""Approvals: a human's decision on one exact action (tool, arguments' digest, subject), single-use, each
state only once, until it expires. On a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

import pytest

from ledgers import Approval, ApprovalError, Ledger
from tests.ledgers.conftest import FakeClock

SUBJECT = "session:s1"
DIGEST = "a" * 64
HOUR_S = 3600.0


def ask(ledger: Ledger, digest: str = DIGEST, action: str = "l402-pay", subject: str = SUBJECT) -> Approval:
    return ledger.request_approval(subject, action, digest, identity="alice", expire_after_s=HOUR_S)


def test_an_approval_request_waits_pending_and_asking_again_returns_the_same_one(ledger: Ledger) -> None:
    first = ask(ledger)
    assert (first.state, first.subject, first.action, first.digest, first.identity) == (
        "pending",
        SUBJECT,
        "l402-pay",
        DIGEST,
        "alice",
    )
    assert first.id.startswith("ap_") and not first.expired and first.decided is None
    assert (first.expires - first.created).total_seconds() == HOUR_S
    assert ask(ledger).id == first.id
    assert [a.id for a in ledger.approvals("pending")] == [first.id]


@pytest.mark.parametrize(
    ("other", "why"),
    [
        ({"digest": "b" * 64}, "other arguments"),
        ({"action": "l402-fetch"}, "another tool"),
        ({"subject": "session:s2"}, "another session"),
    ],
    ids=["digest", "action", "subject"],
)
def test_a_different_action_needs_its_own_approval(ledger: Ledger, other: dict[str, str], why: str) -> None:
    first = ask(ledger)
    second = ask(ledger, **other)
    assert second.id != first.id, why
    assert second.state == "pending"
    assert {a.id for a in ledger.approvals("pending")} == {first.id, second.id}


def test_an_approved_action_is_used_once_only(ledger: Ledger) -> None:
    pending = ask(ledger)
    approved = ledger.decide_approval(pending.id, approve=True)
    assert (approved.id, approved.state) == (pending.id, "approved")
    assert approved.decided is not None
    assert ask(ledger).state == "approved"  # the agent's retry finds it
    ledger.use_approval(pending.id)
    with pytest.raises(ApprovalError, match="is not approved, was used already, or expired"):
        ledger.use_approval(pending.id)
    again = ask(ledger)
    assert (again.state, again.id != pending.id) == ("pending", True)
    assert [a.id for a in ledger.approvals("used")] == [pending.id]


def test_a_denied_action_stays_denied_when_asked_again(ledger: Ledger) -> None:
    pending = ask(ledger)
    denied = ledger.decide_approval(pending.id, approve=False)
    assert denied.state == "denied"
    assert ask(ledger).id == pending.id and ask(ledger).state == "denied"
    with pytest.raises(ApprovalError):
        ledger.use_approval(pending.id)


@pytest.mark.parametrize(("first", "second"), [(True, True), (True, False), (False, True), (False, False)])
def test_an_approval_is_decided_once(ledger: Ledger, first: bool, second: bool) -> None:
    pending = ask(ledger)
    ledger.decide_approval(pending.id, approve=first)
    with pytest.raises(ApprovalError, match=f"is already {'approved' if first else 'denied'}"):
        ledger.decide_approval(pending.id, approve=second)


def test_a_used_approval_cannot_be_decided_again(ledger: Ledger) -> None:
    pending = ask(ledger)
    ledger.decide_approval(pending.id, approve=True)
    ledger.use_approval(pending.id)
    with pytest.raises(ApprovalError, match="is already used"):
        ledger.decide_approval(pending.id, approve=True)


def test_an_unknown_approval_cannot_be_decided_or_used(ledger: Ledger) -> None:
    with pytest.raises(ApprovalError, match="no approval ap_nope"):
        ledger.decide_approval("ap_nope", approve=True)
    with pytest.raises(ApprovalError):
        ledger.use_approval("ap_nope")


def test_a_pending_approval_that_expired_cannot_be_approved_and_a_new_request_starts_over(
    ledger: Ledger, clock: FakeClock
) -> None:
    pending = ask(ledger)
    clock.advance(HOUR_S)
    with pytest.raises(ApprovalError, match="expired at"):
        ledger.decide_approval(pending.id, approve=True)
    assert ledger.approvals("pending") == []
    (listed,) = ledger.approvals("pending", include_expired=True)
    assert (listed.id, listed.expired) == (pending.id, True)
    fresh = ask(ledger)
    assert (fresh.state, fresh.id != pending.id, fresh.expired) == ("pending", True, False)


def test_an_approved_approval_that_expired_cannot_be_used(ledger: Ledger, clock: FakeClock) -> None:
    pending = ask(ledger)
    clock.advance(HOUR_S - 1)
    approved = ledger.decide_approval(pending.id, approve=True)
    # An approval lasts as long as it was given to be decided, counted from the decision.
    assert (approved.expires - approved.decided).total_seconds() == HOUR_S  # type: ignore[operator]
    clock.advance(HOUR_S - 1)
    assert ask(ledger).id == pending.id  # still live
    clock.advance(1)
    with pytest.raises(ApprovalError):
        ledger.use_approval(pending.id)
    fresh = ask(ledger)
    assert (fresh.state, fresh.id != pending.id) == ("pending", True)


def test_an_approval_can_be_given_its_own_lifetime(ledger: Ledger, clock: FakeClock) -> None:
    pending = ask(ledger)
    ledger.decide_approval(pending.id, approve=True, expire_after_s=60)
    clock.advance(61)
    with pytest.raises(ApprovalError):
        ledger.use_approval(pending.id)


def test_approvals_survive_reopening_the_ledger(ledger_url: str, clock: FakeClock) -> None:
    with Ledger.open(ledger_url, clock=clock) as ledger:
        pending = ask(ledger)
        ledger.decide_approval(pending.id, approve=True)
    with Ledger.open(ledger_url, clock=clock) as ledger:
        assert ask(ledger).state == "approved"
        ledger.use_approval(pending.id)
    with Ledger.open(ledger_url, clock=clock) as ledger:
        with pytest.raises(ApprovalError):
            ledger.use_approval(pending.id)


def test_approvals_are_listed_newest_first(ledger: Ledger, clock: FakeClock) -> None:
    first = ask(ledger, digest="1" * 64)
    clock.advance(1)
    second = ask(ledger, digest="2" * 64)
    ledger.decide_approval(first.id, approve=False)
    assert [a.id for a in ledger.approvals()] == [second.id, first.id]
    assert [a.id for a in ledger.approvals("denied")] == [first.id]
