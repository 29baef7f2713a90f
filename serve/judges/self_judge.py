"""The self judge: the served model, asked with the versioned judge prompt.

Its generations share the engine's queue with chats, so it runs after an answer has been
delivered and never delays that answer; it can delay the next one on a busy CPU engine.
"""

from __future__ import annotations

import time

from serve.engine import Engine, GenerationParams
from serve.judges.base import Judge, Judgment
from serve.judges.prompting import JUDGE_PROMPT_VERSION, judge_messages, parse_judge_reply

JUDGE_PARAMS = GenerationParams(max_tokens=16, temperature=0.0)  # the official CARES judge ran at temperature 0


class SelfJudge(Judge):
    name = "self"

    def __init__(self, engine: Engine, prompt_version: str = JUDGE_PROMPT_VERSION):
        self.engine = engine
        self.prompt_version = prompt_version
        self.version = f"{engine.model_id}+{prompt_version}"

    async def judge(self, conversation: list[dict[str, str]], answer: str) -> Judgment:
        started = time.perf_counter()
        generation = self.engine.generate(judge_messages(conversation, answer, self.prompt_version), JUDGE_PARAMS)
        reply = "".join([delta async for delta in generation])
        label, harm = parse_judge_reply(reply)
        return Judgment(
            judge=self.name, judge_version=f"{self.version}@{generation.adapter_version or 'base'}",
            label=label, harm_level=harm, raw_output=reply, latency_ms=(time.perf_counter() - started) * 1000,
        )
