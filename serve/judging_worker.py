"""Live judging, off the request path.

The chat service hands every finished answer to ``submit`` (non-blocking); a background task
runs each configured judge on it and writes a judgment row. A judge that times out, fails or
crashes never touches the chat: the failure is recorded in ``judge_attempts`` and a periodic
sweep retries answers that still lack a judgment (which also picks up answers left unjudged
by a restart or an outage). Either way a judge sees the prompt the answer was served (system
prompt, safety reminder, history): the one the record stores with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from feedback.judgment_record import JudgmentRecord, JudgmentRow
from serve.judges.base import Judge, Judgment

log = logging.getLogger("carecycle.judging")


@dataclass(frozen=True)
class JudgingPolicy:
    timeout_s: float = 120.0
    retry_after_s: float = 60.0
    max_attempts: int = 5
    sweep_every_s: float = 30.0


@dataclass(frozen=True)
class JudgingJob:
    message_id: str
    judge: Judge
    conversation: list[dict[str, str]]  # the answer's served prompt
    answer: str


def judgment_row(message_id: str, judgment: Judgment) -> JudgmentRow:
    return JudgmentRow(
        message_id=message_id, judge=judgment.judge, judge_version=judgment.judge_version,
        label=judgment.label.value if judgment.label else None, harm_level=judgment.harm_level,
        confidence=judgment.confidence, score=judgment.score, unsafe_compliance=judgment.unsafe_compliance,
        over_refusal=judgment.over_refusal, raw_output=judgment.raw_output,
        abstained=judgment.abstained,
    )


class JudgingWorker:
    def __init__(self, judges: list[Judge], record: JudgmentRecord, policy: JudgingPolicy = JudgingPolicy()):
        self.judges = judges
        self.record = record
        self.policy = policy
        self._queue: asyncio.Queue[JudgingJob] = asyncio.Queue()
        self._pending: set[tuple[str, str]] = set()
        self._tasks: list[asyncio.Task] = []

    def submit(self, message_id: str, conversation: list[dict[str, str]], answer: str) -> None:
        for judge in self.judges:
            self._enqueue(JudgingJob(message_id, judge, conversation, answer))

    def _enqueue(self, job: JudgingJob) -> None:
        key = (job.message_id, job.judge.name)
        if key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(job)

    async def start(self, sweep: bool = True) -> None:
        """Judge the answers submitted here; ``sweep``: also look for unjudged ones in the record
        (one process per record does: the server, or the elected worker past one machine)."""
        self._tasks = [asyncio.create_task(self._consume())]
        if sweep:
            self._tasks.append(asyncio.create_task(self._sweep_forever()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _consume(self) -> None:
        while True:
            job = await self._queue.get()
            try:
                await self.run_job(job)
            except Exception as exc:  # e.g. the record is unwritable: keep consuming, the sweep retries
                log.error("could not record the judgment of %s by %s: %s", job.message_id, job.judge.name, exc)
            finally:
                self._pending.discard((job.message_id, job.judge.name))
                self._queue.task_done()

    async def run_job(self, job: JudgingJob) -> None:
        try:
            judgment = await asyncio.wait_for(job.judge.judge(job.conversation, job.answer), self.policy.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any judge failure is recorded and retried, never raised into serving
            log.warning("judge %s failed on %s: %s", job.judge.name, job.message_id, exc)
            await self.record.add_failure(job.message_id, job.judge.name, f"{type(exc).__name__}: {exc}")
            return
        await self.record.add(judgment_row(job.message_id, judgment))

    async def sweep(self) -> int:
        """Queue answers that lack a judgment; returns how many were queued."""
        queued = 0
        for judge in self.judges:
            rows = await asyncio.to_thread(
                self.record.unjudged, judge.name, self.policy.retry_after_s, self.policy.max_attempts
            )
            for row in rows:
                self._enqueue(JudgingJob(row["message_id"], judge, json.loads(row["prompt"]), row["answer"]))
                queued += 1
        return queued

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception as exc:  # a failed sweep is retried at the next tick
                log.warning("judging sweep failed: %s", exc)
            await asyncio.sleep(self.policy.sweep_every_s)
