"""Jobs `guard run` keeps on a schedule (APScheduler 3, on the guard's own event loop).

- refresh balances: every `balances.refresh_every` (with 10% jitter), every known balance older than
  that is asked of the upstream again, one at a time; the job never overlaps itself, and a run that
  was missed (the loop was busy) is run once, not several times. Failures are logged, not fatal.
"""

from __future__ import annotations

import logging

import anyio
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from guard._gate import PolicyGate
from guard._policy import Policy, seconds
from guard._policy_source import PolicySource

logger = logging.getLogger("guard.schedule")

REFRESH_JOB = "refresh-balances"


async def run_schedule(gate: PolicyGate, source: PolicySource) -> None:
    """Run the scheduled jobs until cancelled."""
    scheduler = AsyncIOScheduler(timezone=source.policy.spec.timezone)

    def plan(policy: Policy) -> None:
        if scheduler.get_job(REFRESH_JOB) is not None:
            scheduler.remove_job(REFRESH_JOB)
        every = policy.spec.balances.refresh_every
        if every is not None:
            interval = seconds(every)
            scheduler.add_job(
                gate.refresh_balances,
                "interval",
                seconds=interval,
                jitter=max(1, int(interval / 10)),
                id=REFRESH_JOB,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=int(interval),
            )

    async def replan(old: Policy, new: Policy) -> None:
        if old.spec.balances.refresh_every != new.spec.balances.refresh_every:
            plan(new)

    plan(source.policy)
    source.on_change(replan)
    scheduler.start()
    try:
        await anyio.sleep_forever()
    finally:
        scheduler.shutdown(wait=False)
