"""Wire models: OpenAI's chat-completions shapes plus carecycle's feedback API.

Only the shapes live here; what they mean is in ``serve.chat_service``.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["system", "user", "assistant"]
ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    role: Role
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatMetadata(BaseModel):
    """OpenAI's free-form ``metadata``; carecycle reads two keys from it."""

    model_config = ConfigDict(extra="allow")
    conversation_id: str | None = Field(default=None, pattern=ID_PATTERN)
    # id of an earlier answer: the new answer is a regeneration (a sibling of it)
    regenerate: str | None = Field(default=None, pattern=ID_PATTERN)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    n: Literal[1] = 1
    metadata: ChatMetadata | None = None
    user: str | None = None

    @field_validator("messages")
    @classmethod
    def _no_empty_messages(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        for index, message in enumerate(messages):
            if not message.text.strip():
                raise ValueError(f"messages[{index}] is empty: every message needs some text")
        return messages

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[Choice]
    usage: Usage
    # carecycle's additions (the openai client keeps unknown fields)
    conversation_id: str
    adapter_version: str | None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class StreamChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[StreamChoice]
    usage: Usage | None = None
    conversation_id: str


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message_id: str = Field(pattern=ID_PATTERN)
    rating: Literal["up", "down"]
    reason: str | None = Field(default=None, max_length=200)
    comment: str | None = Field(default=None, max_length=4000)


class FeedbackResponse(BaseModel):
    message_id: str
    rating: Literal["up", "down"]
    replaced: bool


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorDetail
