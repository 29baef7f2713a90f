"""Benchmark: what storing the served prompt adds to an answer's write.

    .venv/bin/python -m benchmarks.bench_answer_writes [--answers 1000] [--rounds 3]

Through the real ``Store`` and ``ChatRecord.add_answer`` on a DuckDB file, in the same run and
interleaved: the baseline (the answer's row alone, as written before the served-prompt record),
every answer with a new prompt (a multi-turn conversation: history grows, so every prompt is
new) and every answer with the same prompt (a first question many users ask). Each one by one
(latency) and all at once (throughput, with the store's group commit). Reports microseconds
per answer, wall and CPU (this process, all threads), medians over rounds, and the ratio to
the baseline: the machine is shared, compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import duckdb

from feedback.chat_record import Answer, ChatRecord, Turn, new_id
from feedback.store import Store

SYSTEM = "You are a careful medical assistant for a clinic. " * 6  # about 300 characters


def prompt_of(i: int, kind: str) -> list[dict[str, str]]:
    if kind == "repeated":
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What helps a cold?"}]
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Question {i}: I have had a cough for a week and a mild fever."},
        {"role": "assistant", "content": "Rest, drink fluids, and see a clinician if it gets worse. " * 3},
        {"role": "user", "content": f"Follow-up {i}: and if the fever goes above 39 degrees?"},
    ]


def answer_row(turn: Turn, answer: Answer):
    """The baseline: the answer's row alone, without a prompt."""

    def task(conn: duckdb.DuckDBPyConnection) -> str:
        conn.execute(
            "INSERT INTO messages (id, conversation_id, parent_id, role, content, status, model_id,"
            " prompt_tokens, completion_tokens, latency_ms) VALUES (?, ?, ?, 'assistant', ?, ?, ?, ?, ?, ?)",
            [turn.answer_id, turn.conversation_id, turn.parent_id, answer.content, answer.status, answer.model_id,
             answer.prompt_tokens, answer.completion_tokens, answer.latency_ms],
        )
        return turn.answer_id

    return task


async def write_answers(store: Store, kind: str, n: int, together: bool) -> None:
    record = ChatRecord(store)

    async def one(i: int) -> None:
        turn = Turn("c", f"q{i}", new_id("msg"))
        answer = Answer(content="Rest and fluids; see a doctor if it lasts. " * 5, status="complete", model_id="m",
                        adapter_version=None, prompt_tokens=120, completion_tokens=60, latency_ms=1.0,
                        prompt=prompt_of(i, kind))
        if kind == "baseline":
            await store.awrite(answer_row(turn, answer))
        else:
            await record.add_answer(turn, answer)

    if together:
        await asyncio.gather(*(one(i) for i in range(n)))
    else:
        for i in range(n):
            await one(i)


def measure(folder: Path, kind: str, n: int, together: bool) -> tuple[float, float, int]:
    """(wall µs, CPU µs) per answer, and the prompts rows stored."""
    with Store(folder / f"{kind}-{together}-{time.monotonic_ns()}.duckdb") as store:
        store.write(lambda conn: conn.execute("INSERT INTO conversations (id, user_id) VALUES ('c', 'u')"))
        wall, cpu = time.perf_counter(), time.process_time()
        asyncio.run(write_answers(store, kind, n, together))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rows = store.read_one("SELECT count(*) FROM prompts")[0]
    return wall / n * 1e6, cpu / n * 1e6, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    kinds = ("baseline", "new prompt", "repeated")
    results: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for together in (False, True):
                for kind in kinds:
                    wall, cpu, rows = measure(Path(tmp), kind, args.answers, together)
                    results.setdefault((kind, together), []).append((wall, cpu))
                    print(f"{kind:10} {'all at once' if together else 'one by one':11} wall {wall:8.0f} µs"
                          f"  CPU {cpu:8.0f} µs  prompts rows {rows}", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f}; medians over {args.rounds} rounds of {args.answers} answers:")
    for together in (False, True):
        base_wall, base_cpu = (statistics.median(r[i] for r in results[("baseline", together)]) for i in (0, 1))
        for kind in kinds:
            wall, cpu = (statistics.median(r[i] for r in results[(kind, together)]) for i in (0, 1))
            print(f"| {'all at once' if together else 'one by one'} | {kind} | {wall:.0f} µs (x{wall / base_wall:.2f})"
                  f" | {cpu:.0f} µs (x{cpu / base_cpu:.2f}) |")


if __name__ == "__main__":
    main()
