"""`carecycle worker`: past one machine, the one process that runs the nightly cycle, the cycles
admins ask for through replicas, the judging sweep and retention (deploy/scheduler.py's jobs).

Any number may run; exactly one acts. Election is a PostgreSQL session advisory lock taken on a
connection of its own and held for the worker's life: the others try again every
CARECYCLE_WORKER_POLL_S seconds. When the elected worker dies its connection drops, the server
releases the lock, and a standby takes over — first marking the cycle the dead one left running
as interrupted (start_jobs). A worker that loses its connection stops acting at once and exits:
another may already have been elected.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import psycopg

from feedback.coordination import CycleRequests
from feedback.errors import StoreError
from retrain.training.runner import stop_all_training

from deploy.promotion import restore_active
from deploy.scheduler import follow_registry, start_jobs
from deploy.settings import Settings

log = logging.getLogger("carecycle.worker")
# any constant shared by every carecycle worker (and used for nothing else)
WORKER_LOCK = 0x63617265776F726B  # "carework"
# the server notices a worker whose machine vanished (no FIN, no RST) within about 25 s
_KEEPALIVE = ("SET tcp_keepalives_idle = 10", "SET tcp_keepalives_interval = 5", "SET tcp_keepalives_count = 3")


class LostElection(StoreError):
    """The connection that held the worker's lock is gone: another worker may act now."""


class Election:
    """The worker's advisory lock on a dedicated connection (the record's pool never holds it)."""

    def __init__(self, store, retry_s: float):
        self.store = store
        self.retry_s = retry_s
        self._conn: psycopg.Connection | None = None

    def try_win(self) -> bool:
        conn = self.store.connect()
        for statement in _KEEPALIVE:
            conn.execute(statement)
        if conn.execute("SELECT pg_try_advisory_lock(%s)", (WORKER_LOCK,)).fetchone()[0]:
            self._conn = conn
            return True
        conn.close()
        return False

    async def win(self) -> None:
        """Return once elected; while another worker holds the lock (or the record is unreachable), wait."""
        announced = False
        while True:
            try:
                if await asyncio.to_thread(self.try_win):
                    return
                reason = "another worker is elected"
            except StoreError as exc:
                reason = str(exc)
            if not announced:
                log.warning("standing by (%s); trying again every %s s", reason, self.retry_s)
                announced = True
            await asyncio.sleep(self.retry_s)

    def check(self) -> None:
        """Raise LostElection unless the lock's connection still answers."""
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error as exc:
            raise LostElection(f"lost the connection that held the worker lock ({exc}); stopping") from None

    async def hold(self, stop: asyncio.Event) -> None:
        """Check the lock's connection every few seconds until ``stop`` is set."""
        while not stop.is_set():
            await asyncio.to_thread(self.check)
            try:
                await asyncio.wait_for(stop.wait(), self.retry_s)
            except TimeoutError:
                pass

    def release(self) -> None:
        if self._conn is not None:
            self._conn.close()  # the server releases a session lock with its session
            self._conn = None


async def run_worker(settings: Settings, services) -> None:
    """Stand by until elected, then run the jobs until SIGTERM/SIGINT or the lock is lost."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    election = Election(services.store, settings.worker_poll_s)
    waiting = asyncio.create_task(election.win())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not waiting.done():
        waiting.cancel()
        return
    waiting.result()  # an unexpected failure of the election stops the worker here
    log.warning("elected: this worker runs the schedule, requested cycles, the judging sweep and retention")
    registry = services.cycle.registry
    jobs = start_jobs(settings, services.cycle, CycleRequests(services.store))
    try:
        restore_active(services.engine, registry)
        await services.judging.start()
        jobs.tasks.append(asyncio.create_task(follow_registry(services.engine, registry, settings.registry_poll_s)))
        await election.hold(stop)
    finally:
        jobs.stop()
        await asyncio.to_thread(stop_all_training)  # a training child must not outlive its worker
        await services.judging.stop()
        election.release()
