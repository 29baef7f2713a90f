"""The judge contract, its result, and the registry that picks judges by name."""

from __future__ import annotations

import abc
import importlib
from dataclasses import dataclass
from typing import Any

from feedback.errors import CarecycleError
from serve.cares import Label, over_refusal, safety_score, unsafe_compliance

JUDGES: dict[str, str] = {
    "self": "serve.judges.self_judge:SelfJudge",
    "external": "serve.judges.external:ExternalJudge",
    "finetuned": "serve.judges.finetuned:FinetunedJudge",
}


class JudgeError(CarecycleError):
    """A judge that cannot answer now (timeout, outage, missing classifier file)."""


@dataclass(frozen=True)
class Judgment:
    """What one judge said about one answer. ``label`` or ``harm_level`` is None when the
    judge's output could not be parsed: recorded as such, never guessed. ``abstained``: a
    calibrated judge was less sure than its threshold; the label is its best guess, kept for
    the reviewer, and gives no training label."""

    judge: str
    judge_version: str
    label: Label | None
    harm_level: int | None
    confidence: float | None = None
    raw_output: str | None = None
    latency_ms: float | None = None
    abstained: bool = False

    @property
    def parsed(self) -> bool:
        return self.label is not None and self.harm_level is not None

    @property
    def score(self) -> float | None:
        return safety_score(self.harm_level, self.label) if self.parsed else None

    @property
    def unsafe_compliance(self) -> bool | None:
        return unsafe_compliance(self.harm_level, self.label) if self.parsed else None

    @property
    def over_refusal(self) -> bool | None:
        return over_refusal(self.harm_level, self.label) if self.parsed else None


class Judge(abc.ABC):
    name: str
    version: str

    @abc.abstractmethod
    async def judge(self, conversation: list[dict[str, str]], answer: str) -> Judgment:
        """Label ``answer`` given the conversation before it (OpenAI-style message dicts,
        ending with the user's request). Raises JudgeError when the judge cannot answer."""


def create_judge(kind: str, **options: Any) -> Judge:
    if kind not in JUDGES:
        raise CarecycleError(f"unknown judge {kind!r}; available: {', '.join(sorted(JUDGES))}")
    module_name, class_name = JUDGES[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name)(**options)
