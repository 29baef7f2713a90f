"""`TrainConfig`: everything one training run needs, as a dataclass that round-trips through JSON.

The fields an operator tunes are named as in TRL's `KTOConfig`/`DPOConfig`; any other TRL option
goes through `trl_overrides` unchanged (for example `{"bf16": true}` on a GPU).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrain.training.errors import TrainConfigError

METHODS = ("kto", "dpo")
DATASET_SUFFIXES = (".parquet", ".jsonl")
DTYPES = ("auto", "float32", "bfloat16", "float16")
LLAMA_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# TrainConfig fields handed to KTOConfig/DPOConfig under the same name
TRL_FIELDS = (
    "learning_rate", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
    "max_length", "max_steps", "seed", "beta",
)
KTO_ONLY_FIELDS = ("desirable_weight", "undesirable_weight")
# BEMACallback's arguments (trl 1.16)
BEMA_OPTIONS = ("update_freq", "ema_power", "bias_power", "lag", "update_after", "multiplier", "min_ema_multiplier",
                "device")
# set by the wrapper itself: an override would break the run's contract (progress, atomic save)
RESERVED_OVERRIDES = ("output_dir", "logging_steps", "save_strategy", "disable_tqdm", "train_sampling_strategy")


@dataclass
class TrainConfig:
    method: str = field(metadata={"help": "Preference method: 'kto' (unpaired rows) or 'dpo' (chosen/rejected pairs)."})
    base_model: str = field(metadata={"help": "Base model: a local transformers folder (or hub id)."})
    dataset: str = field(
        metadata={"help": "Training rows, .parquet or .jsonl, in TRL's conversational columns (KTO: prompt, "
                          "completion, label; DPO: prompt, chosen, rejected). Other columns are dropped."}
    )
    output_dir: str = field(
        metadata={"help": "Where the adapter folder appears, and only when training succeeded. Must not exist."}
    )
    init_adapter: str | None = field(
        default=None,
        metadata={"help": "Adapter folder to continue training from (the active adapter); it is also the reference "
                          "model. None: a fresh LoRA on the base model. When set, the LoRA shape fields are "
                          "taken from that adapter, not from this config."},
    )
    dataset_snapshot_id: str | None = field(
        default=None, metadata={"help": "Id of the record snapshot the rows came from, copied into the manifest."}
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input, in [0, 1)."})
    target_modules: list[str] | str = field(
        default_factory=lambda: list(LLAMA_PROJECTIONS),
        metadata={"help": "Modules that get LoRA: all attention and MLP projections of a Llama-style model, or "
                          "'all-linear' for any architecture."},
    )
    beta: float = field(default=0.1, metadata={"help": "KTO/DPO beta: how far the policy may move from the reference."})
    learning_rate: float = field(
        default=2e-4,
        metadata={"help": "AdamW learning rate. 2e-4 with 3 epochs moves a LoRA on a cycle's few hundred rows; "
                          "5e-5 x 1 epoch left the KTO loss at 0.500 and the DPO loss at 0.693 (benchmarks/README.md)."},
    )
    num_train_epochs: float = field(default=3.0, metadata={"help": "Passes over the rows (unused if max_steps > 0)."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Rows per step (KTO needs >= 2)."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Steps accumulated per optimizer update."})
    max_length: int = field(default=1024, metadata={"help": "Longest prompt + completion in tokens; longer are cut."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer updates; -1: run the epochs."})
    seed: int = field(default=42, metadata={"help": "Seed for LoRA init, shuffling and dropout."})
    torch_threads: int = field(
        default=0, metadata={"help": "torch CPU threads in the training process; 0: torch's default (all cores)."}
    )
    dtype: str = field(
        default="auto", metadata={"help": "dtype the base model is loaded in: 'auto' is bfloat16 on a CUDA GPU and "
                                          "float32 on the CPU; or float32, bfloat16, float16."}
    )
    desirable_weight: float = field(default=1.0, metadata={"help": "KTO: loss weight of desirable rows."})
    undesirable_weight: float = field(default=1.0, metadata={"help": "KTO: loss weight of undesirable rows."})
    bema: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "BEMA weight averaging against drift (TRL's BEMACallback, applied to the LoRA weights; "
                          "the adapter saved is the averaged one): None off; a dict of BEMACallback's arguments, "
                          "{} for carecycle's defaults (update_freq 1). Keys: " + ", ".join(BEMA_OPTIONS) + "."},
    )
    trl_overrides: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Any other KTOConfig/DPOConfig option, passed through as is (e.g. {'bf16': true, "
                          "'activation_checkpointing': true} on a GPU). CPU-safe defaults: bf16 and activation "
                          "(gradient) checkpointing off, report_to 'none'."},
    )

    def __post_init__(self) -> None:
        for name in ("base_model", "dataset", "output_dir", "init_adapter"):
            value = getattr(self, name)
            setattr(self, name, None if value is None else str(value))
        for problem in _problems(self):
            raise TrainConfigError(f"TrainConfig: {problem}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: Path) -> Path:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))
        return Path(path)

    @classmethod
    def from_json(cls, path: Path) -> "TrainConfig":
        data = json.loads(Path(path).read_text())
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TrainConfigError(f"TrainConfig: unknown option(s) {unknown} in {path}")
        return cls(**data)


def _problems(config: TrainConfig):
    """Yield what is wrong, each phrased as what to change."""
    if config.method not in METHODS:
        yield f"method must be one of {METHODS}, got {config.method!r}"
    if config.method == "kto" and config.per_device_train_batch_size < 2:
        yield ("KTO needs per_device_train_batch_size >= 2 (it estimates its KL term from the other rows of the "
               f"batch); set it to 2 or more (got {config.per_device_train_batch_size})")
    if config.method == "dpo" and (config.desirable_weight, config.undesirable_weight) != (1.0, 1.0):
        yield "desirable_weight/undesirable_weight apply to KTO only; leave them at 1.0 for DPO"
    if not config.dataset.endswith(DATASET_SUFFIXES):
        yield f"dataset must be a {' or '.join(DATASET_SUFFIXES)} file, got {config.dataset!r}"
    if config.init_adapter and Path(config.init_adapter).resolve() == Path(config.output_dir).resolve():
        yield "output_dir must differ from init_adapter: adapters are never overwritten"
    yield from _range_problems(config)
    yield from _override_problems(config)
    unknown = sorted(set(config.bema or {}) - set(BEMA_OPTIONS))
    if unknown:
        yield f"bema has unknown option(s) {unknown}; BEMACallback takes {', '.join(BEMA_OPTIONS)}"


def _range_problems(config: TrainConfig):
    positive = ("lora_r", "lora_alpha", "beta", "learning_rate", "per_device_train_batch_size",
                "gradient_accumulation_steps", "max_length", "desirable_weight", "undesirable_weight")
    for name in positive:
        if getattr(config, name) <= 0:
            yield f"{name} must be > 0, got {getattr(config, name)}"
    if not 0 <= config.lora_dropout < 1:
        yield f"lora_dropout must be in [0, 1), got {config.lora_dropout}"
    if config.max_steps == 0 or config.max_steps < -1:
        yield f"max_steps must be -1 (run the epochs) or > 0, got {config.max_steps}"
    if config.max_steps == -1 and config.num_train_epochs <= 0:
        yield "num_train_epochs must be > 0 when max_steps is -1; set one of them"
    if config.torch_threads < 0:
        yield f"torch_threads must be >= 0 (0: torch's default), got {config.torch_threads}"
    if config.dtype not in DTYPES:
        yield f"dtype must be one of {DTYPES}, got {config.dtype!r}"
    if not config.target_modules:
        yield "target_modules is empty; list the projections to adapt or use 'all-linear'"


def _override_problems(config: TrainConfig):
    own = set(TRL_FIELDS) | set(KTO_ONLY_FIELDS)
    for key in sorted(config.trl_overrides):
        if key in own:
            yield f"trl_overrides sets {key!r}, which is a TrainConfig field: set TrainConfig.{key} instead"
        elif key == "gradient_checkpointing":
            yield "trl_overrides: transformers 5 renamed 'gradient_checkpointing': use 'activation_checkpointing'"
        elif key in RESERVED_OVERRIDES:
            yield f"trl_overrides cannot set {key!r}: the training wrapper controls it"
