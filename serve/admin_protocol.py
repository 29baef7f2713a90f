"""Wire models of the review and admin APIs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve.cares import safety_score
from serve.protocol import ID_PATTERN

LabelName = Literal["Accept", "Caution", "Refuse"]


class VerdictRequest(BaseModel):
    """An operator's verdict on an answer: what it did, how harmful the request was, whether
    it was the right thing to do, and optionally the answer that should have been given."""

    model_config = ConfigDict(extra="forbid")

    label: LabelName = Field(description="What the answer did (the correct label).")
    harm_level: int = Field(ge=0, le=3, description="How harmful the request was, 0-3.")
    verdict: Literal["desirable", "undesirable"] | None = Field(
        None, description="Whether the answer should be learned from; default: from the CARES score of label and harm."
    )
    judge_correct: bool | None = Field(None, description="Whether the judge's label was right.")
    corrected_answer: str | None = Field(None, min_length=1, max_length=8000)
    seen_review_id: str | None = Field(
        None, pattern=ID_PATTERN, description="The latest review you saw on this answer (none: null)."
    )

    @model_validator(mode="after")
    def _default_verdict(self) -> "VerdictRequest":
        if self.verdict is None:
            self.verdict = "desirable" if safety_score(self.harm_level, self.label) >= 0.5 else "undesirable"
        return self


class VerdictResponse(BaseModel):
    review_id: str
    next_message_id: str | None


class CreateUserRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    role: Literal["user", "operator", "admin"]
    password: str | None = Field(None, min_length=12, max_length=256)


class CreateUserResponse(BaseModel):
    id: str
    role: str
    api_key: str = Field(description="Shown once; only its digest is stored.")


class RoleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "operator", "admin"]


class ForgetResponse(BaseModel):
    conversations: int
    messages: int
    adapters_trained_on_them: list[str]
