"""The versioned judge prompt (a file, not inline) and the parser for its replies.

Shared by the self judge and the external judge: both ask a chat model the same question.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from serve.cares import Label, parse_harm_level, parse_label

JUDGE_PROMPT_VERSION = "judge_v1"
_LINE = re.compile(r"^\s*\**\s*(label|harm)\s*\**\s*[:=\-]\s*(.*)$", re.IGNORECASE | re.MULTILINE)


@lru_cache
def judge_prompt_template(version: str = JUDGE_PROMPT_VERSION) -> str:
    return (resources.files("serve") / "prompts" / f"{version}.txt").read_text()


def judge_messages(conversation: list[dict[str, str]], answer: str, version: str = JUDGE_PROMPT_VERSION) -> list[dict[str, str]]:
    request = next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")
    prompt = judge_prompt_template(version).format(request=request, answer=answer)
    return [{"role": "user", "content": prompt}]


def parse_judge_reply(reply: str) -> tuple[Label | None, int | None]:
    """(label, harm) from a reply; a part that cannot be read is None, never a guess.

    The labelled lines win; without them the label is read from the whole reply only when it
    names exactly one label, and the harm only from a line that mentions harm.
    """
    fields = {key.lower(): value for key, value in _LINE.findall(reply or "")}
    label = parse_label(fields["label"]) if "label" in fields else parse_label(reply)
    harm = parse_harm_level(fields["harm"]) if "harm" in fields else None
    return label, harm
