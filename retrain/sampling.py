"""The best-of-N sampler (DPO source ``sampled``, see ``retrain.datasets.best_of_n``): one new
answer from the current model — with or without the safety reminder in its system prompt — and
the judge's verdict on it, given the prompt as served (the judge never sees the reminder)."""

from __future__ import annotations

from retrain.datasets.best_of_n import Candidate, Sampler
from serve.engine import Engine, GenerationParams
from serve.judges.base import Judge
from serve.reminder import SAFETY_REMINDER


def _with_system(messages: list[dict[str, str]], extra: str | None) -> list[dict[str, str]]:
    """``messages`` with any served reminder taken out of the system prompt and ``extra`` added."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    text = "\n\n".join([*(s.replace(SAFETY_REMINDER, "").strip() for s in system), *([extra] if extra else [])])
    return ([{"role": "system", "content": text}] if text.strip() else []) + rest


def best_of_n_sampler(engine: Engine, judge: Judge, max_tokens: int = 128, temperature: float = 1.0) -> Sampler:
    """An async ``sampler(prompt_messages, reminder, seed) -> Candidate`` for the dataset builder.
    Samples come from the adapter active now (on-policy)."""

    async def sample(prompt: list[dict[str, str]], reminder: bool, seed: int) -> Candidate:
        messages = _with_system(prompt, SAFETY_REMINDER if reminder else None)
        params = GenerationParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
        text = "".join([delta async for delta in engine.generate(messages, params)]).strip()
        if not text:
            return Candidate(text, None, False, reminder)
        judgment = await judge.judge([m for m in prompt if m["role"] != "system"], text)
        return Candidate(text, judgment.score, judgment.parsed and not judgment.abstained, reminder)

    return sample
