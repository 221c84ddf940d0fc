"""The scheduled balance refresh (`guard.operators.schedule.refresh_balances`): every balance that is due
asked again through a live session's link, logged; a failing run is logged and the next one tries again.
(The nightly report's schedule: tests/operators/test_nightly_report.py; the job running in `guard run`:
tests/e2e/test_payments.py.)"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from guard.operators.schedule import refresh_balances
from guard.payments.adapters.alby import Alby
from guard.payments.payments import Payments
from guard.policy.source import PolicySource
from ledgers import Amount, BalanceObservation, Ledger, StorageError
from tests.conftest import FakeClock
from tests.payments.doubles import FakeLink, policy, text_result

pytestmark = pytest.mark.anyio

SOURCE = PolicySource(policy("version: 1\nbalances: {refresh_every: 1m}\n"))


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Iterator[Ledger]:
    """A ledger whose wallet balance was seen two minutes ago: due for a refresh."""
    with Ledger.open(tmp_path / "ledger.db", clock=clock) as opened:
        opened.observe(BalanceObservation("get_balance", "wallet:alby", Amount(1000, "sat"), money=True))
        clock.advance(120)
        yield opened


async def test_a_run_refreshes_the_balances_due_and_says_how_many(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    link = FakeLink({"get_balance": text_result({"amount_in_sats": 900})})
    with caplog.at_level(logging.INFO, logger="guard.schedule"):
        assert await refresh_balances(Payments(ledger, [Alby()]), SOURCE, lambda: [link]) == 1
    assert "refreshed 1 balance" in caplog.text
    found = ledger.latest("wallet:alby")
    assert found is not None and found[0].amount == Amount(900, "sat")


async def test_a_run_that_fails_is_logged_and_counts_nothing(
    ledger: Ledger, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable() -> None:
        raise StorageError("the ledger could not be read")

    monkeypatch.setattr(ledger, "observed", unreachable)
    link = FakeLink({"get_balance": text_result({"amount_in_sats": 900})})
    assert await refresh_balances(Payments(ledger, [Alby()]), SOURCE, lambda: [link]) == 0
    assert "scheduled balance refresh failed" in caplog.text
    assert link.calls == []
