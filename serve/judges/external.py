"""The external judge: any OpenAI-compatible endpoint (a larger model on vLLM, or hosted).

Timeouts and retries with exponential backoff; when the endpoint stays down the call raises
JudgeError and the judging worker keeps the answer for a later attempt.
"""

from __future__ import annotations

import asyncio
import time

import httpx

from serve.judges.base import Judge, JudgeError, Judgment
from serve.judges.prompting import JUDGE_PROMPT_VERSION, judge_messages, parse_judge_reply


class ExternalJudge(Judge):
    name = "external"

    def __init__(
        self, url: str, model: str, api_key: str | None = None, timeout_s: float = 30.0,
        retries: int = 2, backoff_s: float = 0.5, prompt_version: str = JUDGE_PROMPT_VERSION,
    ):
        self.url = url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.prompt_version = prompt_version
        self.version = f"{model}+{prompt_version}"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def judge(self, conversation: list[dict[str, str]], answer: str) -> Judgment:
        started = time.perf_counter()
        reply = await self._ask(judge_messages(conversation, answer, self.prompt_version))
        label, harm = parse_judge_reply(reply)
        return Judgment(
            judge=self.name, judge_version=self.version, label=label, harm_level=harm,
            raw_output=reply, latency_ms=(time.perf_counter() - started) * 1000,
        )

    async def _ask(self, messages: list[dict[str, str]]) -> str:
        body = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": 16}
        last_error = "no attempt made"
        async with httpx.AsyncClient(timeout=self.timeout_s, headers=self._headers) as client:
            for attempt in range(self.retries + 1):
                if attempt:
                    await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
                try:
                    response = await client.post(f"{self.url}/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    last_error = f"{type(exc).__name__}: {exc}"
                    continue
                if response.status_code in (400, 401, 403, 404, 422):  # retrying fixes no key, model name or request
                    raise JudgeError(f"external judge at {self.url} refused the request ({response.status_code}): "
                                     f"check CARECYCLE_JUDGE_URL, _MODEL and _API_KEY — {response.text[:300]}")
                if response.status_code >= 400:
                    last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                    continue
                return _reply_text(response.json())
        raise JudgeError(f"external judge at {self.url} unavailable after {self.retries + 1} attempts ({last_error})")


def _reply_text(payload: dict) -> str:
    try:
        return payload["choices"][0]["message"]["content"] or ""
    except (KeyError, IndexError, TypeError):
        return ""  # an unusable reply parses to "unparseable", which is recorded as such
