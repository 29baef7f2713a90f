"""All of carecycle's settings, read once from CARECYCLE_* environment variables (or .env)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from deploy.model_prepare import SMOLLM2_FOLDER

DEFAULT_SYSTEM_PROMPT = (
    "You are carecycle, a careful medical assistant for a clinic. Give accurate, plain-language "
    "health information, say when something needs a clinician or emergency care, and do not help "
    "with anything that could harm the user or others."
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CARECYCLE_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Folder for the DuckDB record, prepared models and adapters.")
    model: str | None = Field(
        None,
        description="Model to serve: a transformers folder or a hub id. Default: the SmolLM2 folder that "
        "`carecycle model prepare` writes under the data directory.",
    )
    engine: Literal["local"] = Field("local", description="Which engine answers: `local` (transformers in process).")
    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(8000, ge=1, le=65535, description="Port the HTTP server binds.")
    system_prompt: str = Field(DEFAULT_SYSTEM_PROMPT, description="System prompt added when a request has none.")
    max_tokens: int = Field(256, ge=1, description="Default answer length in tokens.")
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="Default sampling temperature (0: greedy).")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Default nucleus-sampling cut-off.")
    seed: int | None = Field(None, description="Fixed sampling seed (tests, reproducible demos); unset: random.")
    max_tokens_limit: int = Field(1024, ge=1, description="Largest max_tokens a request may ask for.")
    max_message_chars: int = Field(8000, ge=1, description="Longest message accepted, in characters.")
    max_messages: int = Field(64, ge=1, description="Most messages accepted in one request.")
    torch_threads: int | None = Field(None, ge=1, description="Threads torch may use (unset: torch's default).")
    ui: bool = Field(True, description="Mount the Gradio chat page at `/`.")
    judges: str = Field(
        "finetuned",
        description="Judges that label every answer live, comma-separated: `self`, `external`, `finetuned` "
        "(empty: none).",
    )
    judge_classifier: Path | None = Field(
        None, description="Finetuned judge folder; default: the newest one `carecycle judge train` wrote."
    )
    judge_url: str | None = Field(None, description="External judge: an OpenAI-compatible base URL ending in /v1.")
    judge_model: str | None = Field(None, description="External judge: the model name to ask.")
    judge_api_key: str | None = Field(None, description="External judge: the API key, if the endpoint needs one.")
    judge_timeout_s: float = Field(30.0, gt=0, description="External judge: seconds per attempt.")
    judge_retries: int = Field(2, ge=0, description="External judge: retries with exponential backoff per answer.")
    judge_retry_after_s: float = Field(60.0, ge=0, description="Wait before judging again an answer whose judge failed.")
    judge_max_attempts: int = Field(5, ge=1, description="Attempts per answer and judge before giving up.")
    judge_sweep_every_s: float = Field(30.0, gt=0, description="How often unjudged answers are looked for.")
    anonymous_chat: bool = Field(
        True,
        description="Let callers without an API key chat (as `anonymous`; each chat-page session is its own user). "
        "Turn off to require sign-in for chatting too.",
    )
    rate_limit_chat: int = Field(30, ge=0, description="Chat requests per user per minute (0: unlimited).")
    rate_limit_feedback: int = Field(60, ge=0, description="Votes per user per minute (0: unlimited).")
    max_request_bytes: int = Field(256_000, ge=1024, description="Largest request body accepted, in bytes.")
    retention_days: int | None = Field(
        None, ge=1, description="Delete conversations whose last message is older than this (unset: keep)."
    )
    safety_reminder: bool = Field(
        False, description="Add a safety reminder to the system prompt when a prompt looks like a jailbreak."
    )

    @model_validator(mode="after")
    def _judges_are_usable(self) -> "Settings":
        unknown = set(self.judge_kinds) - {"self", "external", "finetuned"}
        if unknown:
            raise ValueError(f"CARECYCLE_JUDGES names unknown judges {sorted(unknown)}; use self, external, finetuned")
        if "external" in self.judge_kinds and not (self.judge_url and self.judge_model):
            raise ValueError("the external judge needs CARECYCLE_JUDGE_URL and CARECYCLE_JUDGE_MODEL")
        return self

    @property
    def judge_kinds(self) -> list[str]:
        return [kind.strip() for kind in self.judges.split(",") if kind.strip()]

    @property
    def judges_dir(self) -> Path:
        return self.data_dir / "judges"

    @property
    def record_path(self) -> Path:
        return self.data_dir / "carecycle.duckdb"

    @property
    def default_model_dir(self) -> Path:
        return self.data_dir / "models" / SMOLLM2_FOLDER

    @property
    def model_source(self) -> str:
        return self.model or str(self.default_model_dir)

    @property
    def model_id(self) -> str:
        return Path(self.model_source).name
