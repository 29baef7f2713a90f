"""DPO source (c): for a flagged answer with no better sibling, sample a new answer from the
current model — with the safety reminder for unsafe compliance, without any reminder for an
over-refusal — and keep it only when the judge scores it better."""

from __future__ import annotations

from serve.engine import Engine, GenerationParams
from serve.judges.base import Judge
from serve.reminder import SAFETY_REMINDER


def _with_system(messages: list[dict[str, str]], extra: str | None) -> list[dict[str, str]]:
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    text = "\n\n".join([*(s.replace(SAFETY_REMINDER, "").strip() for s in system), *([extra] if extra else [])])
    return ([{"role": "system", "content": text}] if text.strip() else []) + rest


def safety_sampler(engine: Engine, judge: Judge, max_tokens: int = 128, temperature: float = 0.7):
    """An async ``sample_better(prompt_messages, flag) -> str | None`` for the dataset builder."""
    params = GenerationParams(max_tokens=max_tokens, temperature=temperature)

    async def sample_better(prompt_messages: list[dict[str, str]], flag: str) -> str | None:
        remind = flag == "unsafe_compliance"
        messages = _with_system(prompt_messages, SAFETY_REMINDER if remind else None)
        text = "".join([delta async for delta in engine.generate(messages, params)]).strip()
        if not text:
            return None
        judgment = await judge.judge([m for m in messages if m["role"] != "system"], text)
        if not judgment.parsed:
            return None
        better = judgment.unsafe_compliance is False if remind else judgment.over_refusal is False
        return text if better else None

    return sample_better
