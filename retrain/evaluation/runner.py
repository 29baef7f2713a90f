"""Answer a benchmark, judge every answer, score it; resumable after an interruption.

Files in ``out_dir``:
- ``run.json``: what this run is (caller's metadata, judge name and version). Resuming a
  folder that holds another run is refused.
- ``items.jsonl``: one record per finished item, appended after every batch. A rerun skips
  the items already there; a line cut short by a crash is dropped and redone.
- ``results.json``: metadata, counts and metrics (overall, slices, Safety Score CI), written
  when every item is done.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from feedback.errors import CarecycleError
from retrain.evaluation.benchmark import BenchmarkItem
from retrain.evaluation.metrics import summarize
from serve.cares import Label, safety_score
from serve.judges.base import Judge, Judgment

Conversation = list[dict[str, str]]
AnswerFn = Callable[[list[Conversation]], list[str] | Awaitable[list[str]]]
ProgressFn = Callable[[int, int, float | None], None]  # done, total, ETA in seconds (None: unknown yet)

RUN_FILE = "run.json"
ITEMS_FILE = "items.jsonl"
RESULTS_FILE = "results.json"


class EvaluationError(CarecycleError):
    """An evaluation that cannot start or continue as asked."""


@dataclass
class EvaluationResult:
    out_dir: Path
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    records: list[dict[str, Any]]  # one per item, in benchmark order

    def to_dict(self) -> dict[str, Any]:
        """The content of results.json."""
        return {"metadata": self.metadata, "metrics": self.metrics}


def run_evaluation(*args: Any, **kwargs: Any) -> EvaluationResult:
    """Answer ``items`` in batches with ``answer_fn`` (conversations in, answers out; sync or
    async), label each answer with ``judge``, and score the labels against the items' harm
    levels. ``metadata`` (JSON-able: adapter, benchmark, split, model, generation settings)
    identifies the run and is copied into results.json. A failure in ``answer_fn`` or the judge
    (JudgeError) stops the run; rerunning with ``resume=True`` redoes only the unfinished
    batches. Takes ``evaluate``'s arguments; callers already inside an event loop await
    ``evaluate`` instead."""
    return asyncio.run(evaluate(*args, **kwargs))


async def evaluate(
    items: Sequence[BenchmarkItem],
    answer_fn: AnswerFn,
    judge: Judge,
    out_dir: str | Path,
    batch_size: int = 8,
    resume: bool = True,
    progress: ProgressFn | None = None,
    metadata: Mapping[str, Any] | None = None,
    system_prompt: str | None = None,
    judge_concurrency: int = 4,
) -> EvaluationResult:
    if batch_size < 1:
        raise EvaluationError(f"batch_size must be at least 1, not {batch_size}")
    _check_unique_ids(items)
    out_dir = Path(out_dir)
    run = {
        "metadata": dict(metadata or {}),
        "judge": {"name": judge.name, "version": judge.version},
        "system_prompt": system_prompt,
    }
    done = _open_run(out_dir, run, resume)
    pending = sorted((item for item in items if item.id not in done), key=lambda item: len(item.prompt))
    tracker = _Progress(progress, total=len(items), done=len(items) - len(pending))
    started = datetime.now(timezone.utc)
    gate = asyncio.Semaphore(judge_concurrency)
    for start in range(0, len(pending), batch_size):
        batch = pending[start:start + batch_size]
        conversations = [conversation_for(item.prompt, system_prompt) for item in batch]
        answers = await _answers(answer_fn, conversations)
        judgments = await asyncio.gather(*(_judge(judge, gate, c, a) for c, a in zip(conversations, answers)))
        records = [_record(item, answer, judgment) for item, answer, judgment in zip(batch, answers, judgments)]
        _append(out_dir / ITEMS_FILE, records)
        done.update((record["id"], record) for record in records)
        tracker.advance(len(batch))
    return _finish(out_dir, items, done, run, resumed=len(items) - len(pending), started=started)


def conversation_for(prompt: str, system_prompt: str | None = None) -> Conversation:
    """The messages a benchmark prompt is asked as (the judge sees the same ones)."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*system, {"role": "user", "content": prompt}]


def load_result(path: str | Path) -> EvaluationResult:
    """A finished run from its folder (or its results.json)."""
    path = Path(path)
    out_dir = path.parent if path.name == RESULTS_FILE else path
    if not (out_dir / RESULTS_FILE).is_file():
        raise EvaluationError(f"{out_dir} holds no {RESULTS_FILE}: the run has not finished")
    results = json.loads((out_dir / RESULTS_FILE).read_text())
    by_id = _read_records(out_dir / ITEMS_FILE)
    records = [by_id[item_id] for item_id in results["metadata"]["item_ids"] if item_id in by_id]
    return EvaluationResult(out_dir, results["metadata"], results["metrics"], records)


# -- steps ---------------------------------------------------------------------------------
def _check_unique_ids(items: Sequence[BenchmarkItem]) -> None:
    counts = Counter(item.id for item in items)
    repeated = [item_id for item_id, count in counts.items() if count > 1]
    if repeated:
        raise EvaluationError(f"item ids must be unique; repeated: {', '.join(repeated[:10])}")


def _open_run(out_dir: Path, run: dict[str, Any], resume: bool) -> dict[str, dict[str, Any]]:
    """The records already finished (none unless resuming the same run); writes run.json."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run_path, items_path = out_dir / RUN_FILE, out_dir / ITEMS_FILE
    if resume and run_path.is_file():
        previous = json.loads(run_path.read_text())
        if previous != json.loads(json.dumps(run)):
            raise EvaluationError(
                f"{out_dir} holds another run ({previous}); use another folder or resume=False to start over"
            )
        return _read_records(items_path)
    items_path.unlink(missing_ok=True)
    (out_dir / RESULTS_FILE).unlink(missing_ok=True)
    run_path.write_text(json.dumps(run, indent=2))
    return {}


def _read_records(path: Path) -> dict[str, dict[str, Any]]:
    """Finished records by id; a last line cut short by a crash is removed from the file."""
    if not path.is_file():
        return {}
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    if complete != text:
        path.write_text(complete)
    records = (json.loads(line) for line in complete.splitlines() if line.strip())
    return {record["id"]: record for record in records}


async def _answers(answer_fn: AnswerFn, conversations: list[Conversation]) -> list[str]:
    if inspect.iscoroutinefunction(answer_fn):
        answers = await answer_fn(conversations)
    else:  # generation is blocking: keep the event loop free for the judge
        answers = await asyncio.to_thread(answer_fn, conversations)
    if len(answers) != len(conversations):
        raise EvaluationError(f"answer_fn returned {len(answers)} answers for {len(conversations)} prompts")
    return list(answers)


async def _judge(judge: Judge, gate: asyncio.Semaphore, conversation: Conversation, answer: str) -> Judgment:
    async with gate:
        return await judge.judge(conversation, answer)


def _record(item: BenchmarkItem, answer: str, judgment: Judgment) -> dict[str, Any]:
    """An abstained judgment keeps its best-guess label for readers but gets no score."""
    label = judgment.label
    return {
        "id": item.id,
        "principle_index": item.principle_index,
        "harmful_level": item.harmful_level,
        "method": item.method,
        "prompt": item.prompt,
        "answer": answer,
        "label": label.value if label is not None else None,
        "score": safety_score(item.harmful_level, label) if label is not None and not judgment.abstained else None,
        "abstained": judgment.abstained,
        "judge_raw": judgment.raw_output,
        "judge_harm_level": judgment.harm_level,
    }


def _append(path: Path, records: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as out:
        out.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
        out.flush()
        os.fsync(out.fileno())


def _finish(
    out_dir: Path,
    items: Sequence[BenchmarkItem],
    done: dict[str, dict[str, Any]],
    run: dict[str, Any],
    resumed: int,
    started: datetime,
) -> EvaluationResult:
    records = [done[item.id] for item in items]
    pairs = [(item, Label(record["label"]) if record["score"] is not None else None)
             for item, record in zip(items, records)]
    metrics = summarize(pairs)
    abstained = sum(1 for record in records if record.get("abstained"))
    metadata = {
        **run["metadata"],
        "judge": run["judge"],
        "system_prompt": run["system_prompt"],
        "counts": {
            "items": len(items),
            "labelled": metrics["overall"]["items"] - metrics["overall"]["unparsed"],
            "unparsed": metrics["overall"]["unparsed"] - abstained,
            "abstained": abstained,
            "resumed": resumed,
        },
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "item_ids": [item.id for item in items],
    }
    result = EvaluationResult(out_dir, metadata, metrics, records)
    temporary = out_dir / f"{RESULTS_FILE}.tmp"
    temporary.write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    temporary.replace(out_dir / RESULTS_FILE)
    return result


class _Progress:
    """Calls ``progress(done, total, eta_s)``; the ETA counts only items computed in this run."""

    def __init__(self, progress: ProgressFn | None, total: int, done: int):
        self.progress, self.total, self.done, self.resumed = progress, total, done, done
        self.started = time.monotonic()
        self._report(None)

    def advance(self, count: int) -> None:
        self.done += count
        rate = (self.done - self.resumed) / max(time.monotonic() - self.started, 1e-9)
        self._report((self.total - self.done) / rate)

    def _report(self, eta_s: float | None) -> None:
        if self.progress is not None:
            self.progress(self.done, self.total, eta_s)
