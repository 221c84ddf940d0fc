"""What answers reveal, held against what the guard counted (`guard.payments.reconcile`): a stored
credential settles its payment in doubt; a money balance's move settles or voids the payments in doubt
from it; a fall the guard's payments do not explain is external spend, a rise a top-up. Each answer
comes through `Payments.settle`, as the gate hands it over."""

from __future__ import annotations

from typing import Any

import pytest

from guard.payments.adapters.l402_mcp import L402Mcp
from guard.payments.adapters.p402 import P402
from guard.payments.decision import Bound
from guard.payments.payments import Payments
from guard.payments.reading import Reading
from ledgers import Amount, Budget, CallRecord, Window
from tests.conftest import FakeClock
from tests.payments.doubles import WHO, RecordingLedger, call, policy, text_result

pytestmark = pytest.mark.anyio

SESSION = "sess_0123456789abcdef01234567"
KEY = f"p402:{SESSION}"
DAY = Window.calendar("day")
COUNTED = Budget("counted", Amount(10_000_000, "usd_micro"), "global", DAY)
WITH_EXTERNAL = Budget("with-external", Amount(10_000_000, "usd_micro"), "global", DAY)
P402_POLICY = policy(
    """\
    version: 1
    budgets:
      - {name: counted, limit: 10 usd, scope: global, window: day}
      - {name: with-external, limit: 10 usd, scope: global, window: day, include_external: true}
    """
)


async def answer(
    ledger: RecordingLedger, clock: FakeClock, tool: str, arguments: Any, result: Any, *adapters: Any
) -> None:
    """An answer to a call that held nothing, a second after the last thing the ledger saw."""
    clock.advance(1)
    adapter = adapters[0]
    reading = Reading(adapter, adapter.prepare(tool, arguments, None))
    await Payments(ledger, list(adapters)).settle(P402_POLICY, call(tool, arguments), WHO, Bound(reading), result, None)


async def session_shows(
    ledger: RecordingLedger, clock: FakeClock, remaining_usd: float, total_usd: float = 5.0
) -> None:
    used = total_usd - remaining_usd
    session = {"id": SESSION, "status": "active", "budget": {"total_usd": total_usd, "used_usd": used}}
    await answer(ledger, clock, "p402_get_session", {"session_id": SESSION}, text_result(session), P402())


def chat(ledger: RecordingLedger, clock: FakeClock, usd_micro: int, *, paid: bool | None) -> int:
    """A chat paid from the session through the guard: settled (paid), voided (not paid) or in doubt (None)."""
    clock.advance(1)
    amount = Amount(usd_micro, "usd_micro")
    hold = ledger.reserve([COUNTED, WITH_EXTERNAL], amount, balance_key=KEY, session="s1", tool="p402_chat")
    ledger.mark_forwarded(hold)
    if paid is None:
        ledger.mark_in_doubt(hold)
    elif paid:
        ledger.settle(hold, amount)
    else:
        ledger.void(hold)
    return hold


def events(ledger: RecordingLedger, decision: str) -> list[CallRecord]:
    return [event for event in ledger.events if event.decision == decision]


async def test_a_balance_drop_the_guards_payments_do_not_explain_is_external_spend_counted_where_opted_in(
    ledger: RecordingLedger, clock: FakeClock
) -> None:
    await session_shows(ledger, clock, 5.00)
    chat(ledger, clock, 250_000, paid=True)
    await session_shows(ledger, clock, 3.75)  # 1.00 usd spent another way
    await session_shows(ledger, clock, 3.75)  # unchanged: nothing new

    [external] = events(ledger, "external")
    assert external.spent == Amount(1_000_000, "usd_micro")
    assert (
        external.reason == f"{KEY} fell by 1.25 usd; the guard's payments explain 0.25 usd: 1 usd was spent another way"
    )
    assert (external.tool, external.session, external.server, external.balance_key) == ("p402", "s1", "shop", KEY)
    assert external.hold_id is not None and ledger.hold(external.hold_id).balance_key == KEY
    assert ledger.usage(COUNTED).spent == 250_000
    assert ledger.usage(WITH_EXTERNAL).spent == 1_250_000


async def test_a_balance_that_rises_is_a_top_up_never_negative_spend(ledger: RecordingLedger, clock: FakeClock) -> None:
    await session_shows(ledger, clock, 3.00)
    await session_shows(ledger, clock, 6.00, total_usd=8.0)

    [topup] = events(ledger, "topup")
    assert (topup.reason, topup.spent, topup.balance_key) == (f"{KEY} rose by 3 usd (a top-up)", None, KEY)
    assert events(ledger, "external") == []
    assert ledger.usage(WITH_EXTERNAL).spent == 0


async def test_a_payment_in_doubt_is_voided_when_the_balance_shows_it_never_left(
    ledger: RecordingLedger, clock: FakeClock
) -> None:
    await session_shows(ledger, clock, 5.00)
    doubtful = chat(ledger, clock, 250_000, paid=None)
    await session_shows(ledger, clock, 5.00)

    assert ledger.hold(doubtful).phase == "voided"
    [resolved] = events(ledger, "resolve")
    assert resolved.reason == f"hold {doubtful} reconciled: {KEY} shows the payment did not leave (voided)"
    assert (resolved.hold_id, resolved.spent, resolved.balance_key, resolved.tool) == (doubtful, None, KEY, "p402_chat")
    assert events(ledger, "external") == []


async def test_a_payment_in_doubt_is_settled_when_the_balance_fell_by_exactly_what_was_counted(
    ledger: RecordingLedger, clock: FakeClock
) -> None:
    await session_shows(ledger, clock, 5.00)
    chat(ledger, clock, 100_000, paid=True)
    doubtful = chat(ledger, clock, 250_000, paid=None)
    await session_shows(ledger, clock, 4.65)

    info = ledger.hold(doubtful)
    assert (info.phase, info.settled) == ("settled", Amount(250_000, "usd_micro"))
    [resolved] = events(ledger, "resolve")
    assert resolved.reason == f"hold {doubtful} reconciled: {KEY} shows the payment left (settled)"
    assert resolved.spent == Amount(250_000, "usd_micro")
    assert events(ledger, "external") == []
    assert ledger.usage(COUNTED).spent == 350_000


async def test_a_balance_move_that_proves_neither_leaves_the_payment_in_doubt(
    ledger: RecordingLedger, clock: FakeClock
) -> None:
    await session_shows(ledger, clock, 5.00)
    doubtful = chat(ledger, clock, 250_000, paid=None)
    await session_shows(ledger, clock, 4.90)  # fell by 0.10: neither 0.25 nor nothing

    assert ledger.hold(doubtful).phase == "in_doubt"
    assert events(ledger, "resolve") == events(ledger, "external") == []


async def test_a_drop_in_a_balance_that_is_not_money_is_not_external_spend(
    ledger: RecordingLedger, clock: FakeClock
) -> None:
    origin = "https://api.example.com"
    for credits in (100, 40):
        balance = {"origin": origin, "creditsRemaining": credits, "stale": False}
        await answer(ledger, clock, "l402-balance", {"origin": origin}, text_result(balance), L402Mcp())
    found = ledger.latest(f"credits:{origin}")
    assert found is not None and found[0].amount == Amount(40, f"credits:{origin}")
    assert ledger.events == []


CREDENTIAL_HASH = "ab" * 32


def credentials(payment_hash: str) -> dict[str, Any]:
    return text_result(
        {
            "credentials": [
                {
                    "origin": "https://paid.example.com",
                    "paymentHash": payment_hash,
                    "creditBalance": None,
                    "storedAt": "2026-11-21T10:00:00Z",
                    "lastUsed": "2026-11-21T10:00:00Z",
                }
            ]
        }
    )


async def test_a_payment_in_doubt_is_settled_when_the_upstream_shows_its_credential(
    ledger: RecordingLedger, clock: FakeClock
) -> None:
    budget = Budget("per-session", Amount(5000, "sat"), "session:s1")
    hold = ledger.reserve(
        [budget], Amount(120, "sat"), idempotency_key=CREDENTIAL_HASH, session="s1", tool="l402-fetch"
    )
    ledger.mark_forwarded(hold)
    ledger.mark_in_doubt(hold)

    await answer(ledger, clock, "l402-credentials", {}, credentials(CREDENTIAL_HASH), L402Mcp())

    info = ledger.hold(hold)
    assert (info.phase, info.settled) == ("settled", Amount(120, "sat"))
    [resolved] = events(ledger, "resolve")
    assert (resolved.hold_id, resolved.spent, resolved.tool, resolved.session) == (
        hold,
        Amount(120, "sat"),
        "l402-fetch",
        "s1",
    )
    assert resolved.reason == f"hold {hold} reconciled: the upstream shows payment {CREDENTIAL_HASH} was made"
    [stored] = [e.call for e in ledger.calls(last=10) if e.call.decision == "resolve"]
    assert stored.hold_id == hold


async def test_a_credential_for_a_payment_not_in_doubt_changes_nothing(
    ledger: RecordingLedger, clock: FakeClock
) -> None:
    budget = Budget("per-session", Amount(5000, "sat"), "session:s1")
    hold = ledger.reserve([budget], Amount(120, "sat"), idempotency_key=CREDENTIAL_HASH, session="s1")
    ledger.mark_forwarded(hold)
    ledger.settle(hold, Amount(100, "sat"))

    await answer(ledger, clock, "l402-credentials", {}, credentials(CREDENTIAL_HASH), L402Mcp())
    await answer(ledger, clock, "l402-credentials", {}, credentials("cd" * 32), L402Mcp())  # no hold has it

    assert ledger.hold(hold).settled == Amount(100, "sat")
    assert ledger.events == []
