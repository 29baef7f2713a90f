"""The nightly schedule: APScheduler 3.x inside the server process (the owner of the record)."""

from __future__ import annotations

import logging

from feedback.errors import ConflictError

from deploy.cycle import Cycle
from deploy.settings import Settings

log = logging.getLogger("carecycle.scheduler")
JOB_ID = "nightly-cycle"


async def scheduled_cycle(cycle: Cycle) -> None:
    try:
        record = await cycle.run("schedule")
        log.info("scheduled cycle %s ended: %s", record["id"], record["status"])
    except ConflictError as exc:  # a cycle triggered by hand is still running
        log.warning("scheduled cycle skipped: %s", exc)


def start_scheduler(cycle: Cycle, settings: Settings):
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.cron import CronTrigger

    hour, minute, second = (int(part) for part in f"{settings.cycle_time}:00".split(":")[:3])  # HH:MM[:SS]
    scheduler = AsyncIOScheduler(timezone=settings.cycle_timezone)
    scheduler.add_job(
        scheduled_cycle, CronTrigger(hour=hour, minute=minute, second=second, timezone=settings.cycle_timezone),
        args=[cycle],
        id=JOB_ID, max_instances=1, coalesce=True, misfire_grace_time=3600,
    )
    scheduler.start()
    return scheduler
