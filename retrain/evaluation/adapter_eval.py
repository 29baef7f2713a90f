"""Evaluate one adapter (or the base model) of a running engine on a benchmark, answered with
the engine's ``answer_many``. Used by `carecycle eval` and by the nightly cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from retrain.evaluation.benchmark import BenchmarkItem
from retrain.evaluation.runner import EvaluationResult, ProgressFn, evaluate
from serve.engine import Engine
from serve.judges.base import Judge


def answer_function(engine: Engine, adapter: str | None, max_new_tokens: int):
    """Conversations in, greedy answers out, with ``adapter`` (None: the base model)."""

    async def many(conversations):  # a coroutine function: the runner awaits it on its loop
        return await engine.answer_many(conversations, max_new_tokens, adapter)

    return many


async def evaluate_adapter(
    engine: Engine, adapter: str | None, items: Sequence[BenchmarkItem], judge: Judge, out_dir: Path,
    max_new_tokens: int = 128, batch_size: int = 8, system_prompt: str | None = None,
    progress: ProgressFn | None = None, metadata: dict[str, Any] | None = None,
) -> EvaluationResult:
    return await evaluate(
        items, answer_function(engine, adapter, max_new_tokens), judge, out_dir, batch_size=batch_size,
        progress=progress, system_prompt=system_prompt,
        metadata={"adapter": adapter or "none", "model": engine.model_id, "max_new_tokens": max_new_tokens,
                  **(metadata or {})},
    )
