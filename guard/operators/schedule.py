"""Jobs `guard run` keeps on a schedule (APScheduler 3, on the guard's own event loop).

- refresh balances: every `balances.refresh_every` (with 10% jitter), every known balance older than
  that is asked of the upstream again, one at a time; the job never overlaps itself, and a run that
  was missed (the loop was busy) is run once, not several times. Failures are logged, not fatal.
- the nightly report: at `report.at` in the policy's time zone (a cron trigger), the report of the 24 hours
  before that moment is written to `report.dir` in each of `report.formats`, named by that day
  (`guard-report-YYYY-MM-DD.md`). A guard that was down at that time and starts again the same day writes
  the missing report at once (the files on disk say whether it was written); a later day's start does not
  write an old one (`guard report --day` does). A run late by under an hour (a busy loop, a suspended
  machine) still runs (misfire grace), once.

Both jobs follow policy reloads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from guard.core import SessionLink, off_loop
from guard.operators.report import write_reports
from guard.payments.payments import Payments
from guard.policy.model import seconds
from guard.policy.rules import Policy
from guard.policy.source import PolicySource
from ledgers import Ledger

logger = logging.getLogger("guard.schedule")

REFRESH_JOB = "refresh-balances"
REPORT_JOB = "nightly-report"
CATCH_UP_JOB = "nightly-report-catch-up"
REPORT_MISFIRE_GRACE_S = 3600
REPORTED_PERIOD = timedelta(hours=24)


def report_dir(policy: Policy) -> Path:
    """`report.dir` (with ~ expanded), or $XDG_DATA_HOME/guard/reports."""
    if policy.spec.report.dir:
        return Path(policy.spec.report.dir).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "guard" / "reports"


class NightlyReport:
    """Which nightly report is due, and writing it. `now` is the wall clock (a fake one in tests)."""

    def __init__(self, ledger: Ledger, now: Callable[[ZoneInfo], datetime] = datetime.now) -> None:
        self._ledger = ledger
        self._now = now
        self._written: list[Callable[[list[Path]], None]] = []

    def on_written(self, listener: Callable[[list[Path]], None]) -> None:
        """Be told of the files each run wrote (tests wait on it instead of sleeping)."""
        self._written.append(listener)

    def last_scheduled(self, policy: Policy) -> datetime | None:
        """The latest `report.at` at or before now, in the policy's time zone (None: no nightly report)."""
        at = policy.spec.report.at
        if at is None:
            return None
        zone = ZoneInfo(policy.spec.timezone)
        now = self._now(zone)
        hour, minute = (int(part) for part in at.split(":"))
        today = datetime.combine(now.date(), time(hour, minute), tzinfo=zone)
        return today if today <= now else today - timedelta(days=1)

    def missed_today(self, policy: Policy) -> bool:
        """Whether today's report time has passed and its files are not all there."""
        scheduled = self.last_scheduled(policy)
        if scheduled is None or scheduled.date() != self._now(ZoneInfo(policy.spec.timezone)).date():
            return False
        directory = report_dir(policy)
        return not all((directory / f"{_stem(scheduled)}.{f}").exists() for f in policy.spec.report.formats)

    async def run(self, policy: Policy) -> list[Path]:
        """Write the report for the latest scheduled time (a job: failures are logged, not raised)."""
        scheduled = self.last_scheduled(policy)
        if scheduled is None:
            return []
        directory = report_dir(policy)
        try:
            written = await off_loop(
                write_reports,
                self._ledger,
                scheduled - REPORTED_PERIOD,
                scheduled,
                policy.spec.report.formats,
                directory,
                _stem(scheduled),
                policy.spec.timezone,
            )
        except Exception:
            logger.exception("the nightly report for %s could not be written", scheduled.date())
            return []
        logger.info("nightly report written: %s", ", ".join(str(path) for path in written))
        for listener in self._written:
            listener(written)
        return written


def _stem(scheduled: datetime) -> str:
    return f"guard-report-{scheduled.date().isoformat()}"


async def refresh_balances(payments: Payments, source: PolicySource, links: Callable[[], list[SessionLink]]) -> int:
    """The balance refresh job: every known balance older than `refresh_every` asked of the upstream again,
    through a live session's link. A failed run is logged; the next one tries again."""
    try:
        done = await payments.refresh_due(source.policy, links)
    except Exception:
        logger.exception("scheduled balance refresh failed")
        done = 0
    if done:
        logger.info("refreshed %d balance%s", done, "" if done == 1 else "s")
    if source.policy.spec.chains:  # x402 payments in doubt, as the policy's chains say
        try:
            await payments.reconcile_on_chain(source.policy)
        except Exception:
            logger.exception("scheduled chain reconciliation failed")
    return done


async def run_schedule(
    source: PolicySource, nightly: NightlyReport, payments: Payments, links: Callable[[], list[SessionLink]]
) -> None:
    """Run the scheduled jobs until cancelled; `links` gives the live sessions' links (the balance refresh
    asks the upstream through one)."""
    scheduler = AsyncIOScheduler(timezone=source.policy.spec.timezone)

    async def write_nightly() -> None:  # a coroutine function: APScheduler awaits it on the loop
        await nightly.run(source.policy)

    def plan(policy: Policy) -> None:
        for job in (REFRESH_JOB, REPORT_JOB, CATCH_UP_JOB):
            if scheduler.get_job(job) is not None:
                scheduler.remove_job(job)
        every = policy.spec.balances.refresh_every
        if every is not None:
            interval = seconds(every)
            scheduler.add_job(
                refresh_balances,
                "interval",
                args=(payments, source, links),
                seconds=interval,
                jitter=max(1, int(interval / 10)),
                id=REFRESH_JOB,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=int(interval),
            )
        at = policy.spec.report.at
        if at is not None:
            hour, minute = at.split(":")
            trigger = CronTrigger(hour=int(hour), minute=int(minute), timezone=ZoneInfo(policy.spec.timezone))
            scheduler.add_job(
                write_nightly,
                trigger,
                id=REPORT_JOB,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=REPORT_MISFIRE_GRACE_S,
            )
            if nightly.missed_today(policy):
                logger.info("today's nightly report was not written (guard was down at %s): writing it now", at)
                scheduler.add_job(write_nightly, id=CATCH_UP_JOB, max_instances=1)

    async def replan(old: Policy, new: Policy) -> None:
        before = (old.spec.balances.refresh_every, old.spec.report, old.spec.timezone)
        if before != (new.spec.balances.refresh_every, new.spec.report, new.spec.timezone):
            plan(new)

    plan(source.policy)
    source.on_change(replan)
    scheduler.start()
    try:
        await anyio.sleep_forever()
    finally:
        scheduler.shutdown(wait=False)
