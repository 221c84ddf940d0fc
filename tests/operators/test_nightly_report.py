"""The nightly report of `guard run` (`report.at`): an APScheduler cron job in the policy's time zone, run
under a fake wall clock (time-machine moves `datetime.now`, which APScheduler and the ledger read; the event
loop's own monotonic clock runs on, so the job fires a real half second after the fake time is set)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import pytest
import time_machine

from guard.operators.schedule import NightlyReport, run_schedule
from guard.payments.payments import Payments
from guard.policy.files import load
from guard.policy.source import PolicySource
from ledgers import Amount, Budget, Ledger
from tests.conftest import WAIT_S

pytestmark = pytest.mark.anyio

PARIS = ZoneInfo("Europe/Paris")
POLICY = """\
version: 1
timezone: Europe/Paris
balances: {{refresh_every: null}}
report:
  at: "{at}"
  dir: {dir}
  formats: [md, json]
"""


def policy_source(tmp_path: Path, at: str) -> PolicySource:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(at=at, dir=tmp_path / "reports"))
    policy, _ = load(path)
    return PolicySource(policy, path)


@asynccontextmanager
async def scheduled(
    tmp_path: Path, ledger: Ledger, at: str
) -> AsyncIterator[anyio.abc.ObjectReceiveStream[list[Path]]]:
    """`run_schedule` as `guard run` runs it; yields a stream of the file lists each report run writes."""
    source = policy_source(tmp_path, at)
    nightly = NightlyReport(ledger)
    sent, received = anyio.create_memory_object_stream[list[Path]](10)
    nightly.on_written(sent.send_nowait)
    with sent, received:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(run_schedule, source, nightly, Payments(ledger, []), list)
            yield received
            tasks.cancel_scope.cancel()


def spend(ledger: Ledger, sats: int) -> None:
    hold = ledger.reserve([Budget("daily", Amount(10_000, "sat"))], Amount(sats, "sat"), session="s1", tool="buy")
    ledger.settle(hold, Amount(sats, "sat"))


async def test_the_report_is_written_at_report_at_in_the_policys_time_zone(tmp_path: Path) -> None:
    with time_machine.travel(datetime(2026, 11, 21, 23, 54, 59, 500_000, tzinfo=PARIS), tick=True):
        with Ledger.open(tmp_path / "ledger.db") as ledger:
            spend(ledger, 42)
            async with scheduled(tmp_path, ledger, "23:55") as written:
                with anyio.fail_after(WAIT_S):
                    files = await written.receive()
                with pytest.raises(anyio.WouldBlock):
                    written.receive_nowait()  # one run, not a catch-up as well
    names = sorted(path.name for path in files)
    assert names == ["guard-report-2026-11-21.json", "guard-report-2026-11-21.md"]
    report = json.loads((tmp_path / "reports" / "guard-report-2026-11-21.json").read_text())
    # The 24 hours before 23:55 Paris time (22:55 UTC), with the spend made before it.
    assert datetime.fromisoformat(report["period"]["end"]) == datetime(2026, 11, 21, 23, 55, tzinfo=PARIS)
    assert datetime.fromisoformat(report["period"]["start"]) == datetime(2026, 11, 20, 23, 55, tzinfo=PARIS)
    assert "42" in (tmp_path / "reports" / "guard-report-2026-11-21.md").read_text()


async def test_a_guard_down_at_report_time_writes_the_report_once_when_it_starts_the_same_day(
    tmp_path: Path,
) -> None:
    with time_machine.travel(datetime(2026, 11, 21, 9, 30, tzinfo=PARIS), tick=True):
        with Ledger.open(tmp_path / "ledger.db") as ledger:
            nightly = NightlyReport(ledger)
            policy = policy_source(tmp_path, "08:00").policy
            assert nightly.missed_today(policy)
            async with scheduled(tmp_path, ledger, "08:00") as written:
                with anyio.fail_after(WAIT_S):
                    files = await written.receive()
            assert {path.name for path in files} == {"guard-report-2026-11-21.md", "guard-report-2026-11-21.json"}
            # Started again the same day: the files are there, so nothing is written twice.
            assert not nightly.missed_today(policy)


async def test_a_guard_started_before_report_time_or_on_a_later_day_writes_no_old_report(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "ledger.db") as ledger:
        policy = policy_source(tmp_path, "08:00").policy
        with time_machine.travel(datetime(2026, 11, 21, 7, 59, tzinfo=PARIS), tick=False):
            assert not NightlyReport(ledger).missed_today(policy)  # today's time has not come yet
        with time_machine.travel(datetime(2026, 11, 22, 7, 0, tzinfo=PARIS), tick=False):
            # Yesterday's 08:00 report is missing, but a later day's start leaves it to `guard report --day`.
            assert NightlyReport(ledger).last_scheduled(policy) == datetime(2026, 11, 21, 8, 0, tzinfo=PARIS)
            assert not NightlyReport(ledger).missed_today(policy)


async def test_without_report_at_nothing_is_scheduled(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\n")
    policy, _ = load(path)
    with Ledger.open(tmp_path / "ledger.db") as ledger:
        assert NightlyReport(ledger).last_scheduled(policy) is None
        assert not NightlyReport(ledger).missed_today(policy)
