"""The periodic work of carecycle: the nightly cycle (APScheduler 3.x), retention, cycles that an
admin asked for on another process, and following the registry's active adapter.

``start_jobs`` starts what exactly one process per record may run: the server on the embedded
default, else the elected `carecycle worker` (deploy/worker.py). ``follow_registry`` runs in every
process that serves or evaluates when several share the record.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from feedback.coordination import CycleRequests
from feedback.errors import ConflictError
from feedback.registry_record import RegistryRecord
from feedback.retention import purge_expired
from serve.engine import Engine

from deploy.cycle import Cycle
from deploy.promotion import restore_active
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


@dataclass
class Jobs:
    """What ``start_jobs`` started; ``stop`` ends it all."""

    scheduler: object | None = None
    tasks: list[asyncio.Task] = field(default_factory=list)

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        for task in self.tasks:
            task.cancel()


def start_jobs(settings: Settings, cycle: Cycle, requests: CycleRequests | None = None) -> Jobs:
    """The one-per-record jobs: first mark the cycles a dead predecessor left running as
    interrupted and remove their snapshots, then the nightly schedule, retention and
    (``requests``) the cycles admins ask for through replicas that run none."""
    interrupted = cycle.registry.interrupt_running()
    if interrupted:
        log.warning("marked interrupted: %s", ", ".join(interrupted))
    if leftovers := cycle.discard_leftover_snapshots():
        log.warning("removed the unscrubbed snapshots of cycles %s", ", ".join(leftovers))
    jobs = Jobs(scheduler=start_scheduler(cycle, settings) if settings.cycle_enabled else None)
    jobs.tasks.append(asyncio.create_task(enforce_retention(settings, cycle.store)))
    if requests is not None:
        jobs.tasks.append(asyncio.create_task(start_requested_cycles(cycle, requests, settings.worker_poll_s)))
    return jobs


async def enforce_retention(settings: Settings, store) -> None:
    """Hourly: delete conversations past the retention period (when one is set)."""
    while settings.retention_days:
        try:
            await asyncio.to_thread(purge_expired, store, "system:retention", settings.retention_days)
        except Exception as exc:  # try again next hour; the loop must outlive one failure
            log.error("retention purge failed: %s", exc)
        await asyncio.sleep(3600)


def ask_for_cycle(settings: Settings, cycle: Cycle, trigger: str, actor: str) -> dict:
    """An admin's cycle: started here on the embedded default, else queued for the worker."""
    if settings.worker == "embedded":
        return {"cycle_id": cycle.trigger(trigger, actor), "status": "running"}
    request = CycleRequests(cycle.store).ask(actor, trigger)
    return {"request_id": request["id"], "status": "queued"}


async def start_requested_cycles(cycle: Cycle, requests: CycleRequests, every_s: float) -> None:
    """Start the oldest waiting cycle request whenever no cycle runs here."""
    while True:
        try:
            request = await asyncio.to_thread(requests.oldest_waiting) if cycle.running is None else None
            if request is not None:
                cycle_id = cycle.trigger(request["trigger"], request["requested_by"])
                await asyncio.to_thread(requests.started, request["id"], cycle_id)
                log.info("cycle %s started for request %s", cycle_id, request["id"])
        except Exception as exc:  # e.g. the record is unreachable for a moment: the next tick retries
            log.warning("could not start a requested cycle: %s", exc)
        await asyncio.sleep(every_s)


async def follow_registry(engine: Engine, registry: RegistryRecord, every_s: float) -> None:
    """Serve the adapter the registry names active, however it changed (a promotion or rollback
    through another replica, the worker's cycle): checked every ``every_s`` seconds."""
    while True:
        try:
            await asyncio.to_thread(serve_registry_choice, engine, registry)
        except Exception as exc:  # a missing adapter or an unreachable record: retried next tick
            log.warning("could not follow the registry: %s", exc)
        await asyncio.sleep(every_s)


def serve_registry_choice(engine: Engine, registry: RegistryRecord) -> str | None:
    """Switch ``engine`` to the registry's active adapter if it serves another; returns the version
    switched to (None: no change)."""
    active = registry.with_status("active")
    wanted = active["version"] if active else None
    if wanted == engine.active_adapter:
        return None
    log.info("the registry's active adapter is now %s: switching", wanted or "the base model")
    restore_active(engine, registry)  # loads it (checksum-verified), activates it, keeps the previous one ready
    return wanted
