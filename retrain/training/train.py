"""Train one KTO or DPO LoRA adapter: `python -m retrain.training.train --config run.json`.

Run by `runner.run_training` in a child process. Progress goes to stdout as JSON lines
(`events`); the adapter folder appears at `output_dir` only when training succeeded.
Exit codes: 0 done, 2 refused (bad config or data), 3 skipped (too few rows).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from feedback.errors import CarecycleError
from retrain.training.adapter_folder import MANIFEST, finish, partial_path, verify_adapter
from retrain.training.config import KTO_ONLY_FIELDS, TRL_FIELDS, TrainConfig
from retrain.training.data import load_rows, require_enough, row_counts
from retrain.training.errors import TooFewRowsError, TrainConfigError
from retrain.training.events import emit

EXIT_REFUSED = 2
EXIT_SKIPPED = 3


def main(config: TrainConfig) -> dict[str, Any]:
    """Train and save the adapter folder; return its manifest. Raises `TooFewRowsError` before heavy imports."""
    output_dir = Path(config.output_dir)
    if output_dir.exists():
        raise TrainConfigError(f"output_dir {output_dir} already exists; adapters are never overwritten: pick another")
    rows = load_rows(config)
    counts = row_counts(config.method, rows)
    require_enough(config, counts)
    if config.init_adapter and (Path(config.init_adapter) / MANIFEST).exists():
        verify_adapter(Path(config.init_adapter))
    partial = partial_path(output_dir)
    shutil.rmtree(partial, ignore_errors=True)
    try:
        stats = _train(config, rows, partial)
        return finish(partial, output_dir, _manifest(config, counts, stats))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def build_trl_args(config: TrainConfig, output_dir: Path):
    """TRL's KTOConfig/DPOConfig for `config`: CPU-safe defaults, then `trl_overrides` as given."""
    from trl import DPOConfig, KTOConfig

    fields = {name: getattr(config, name) for name in TRL_FIELDS}
    if config.method == "kto":
        fields.update({name: getattr(config, name) for name in KTO_ONLY_FIELDS})
    defaults = {"bf16": False, "activation_checkpointing": False, "report_to": "none"}
    fixed = {"output_dir": str(output_dir), "logging_steps": 1, "save_strategy": "no", "disable_tqdm": True}
    trl_config = KTOConfig if config.method == "kto" else DPOConfig
    return trl_config(**{**defaults, **config.trl_overrides, **fields, **fixed})


def model_dtype(name: str) -> str:
    """The dtype a TrainConfig's ``dtype`` names: 'auto' is bfloat16 on a CUDA GPU, float32 on the CPU."""
    if name != "auto":
        return name
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


def load_model(config: TrainConfig):
    """(model, tokenizer, peft_config): a fresh LoRA config, or None with the init adapter loaded trainable."""
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.base_model)
    model = AutoModelForCausalLM.from_pretrained(config.base_model, dtype=getattr(torch, model_dtype(config.dtype)))
    if config.init_adapter:
        return PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True), tokenizer, None
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=config.target_modules, task_type="CAUSAL_LM",
    )
    return model, tokenizer, lora


def trainer_class(method: str):
    from trl import DPOTrainer, KTOTrainer

    return KTOTrainer if method == "kto" else DPOTrainer


def _train(config: TrainConfig, rows: list[dict[str, Any]], partial: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback

    from retrain.training.bema import LoraBEMA
    from retrain.training.progress import JsonProgress

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    model, tokenizer, peft_config = load_model(config)
    progress = JsonProgress()
    callbacks = [progress, *([LoraBEMA(**config.bema)] if config.bema is not None else [])]
    trainer = trainer_class(config.method)(
        model=model, args=build_trl_args(config, partial), train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # its dict lines would interleave with the JSON events
    started = time.monotonic()
    result = trainer.train()
    seconds = time.monotonic() - started
    # only the trained adapter: TRL adds a frozen "ref" copy when continuing from an init adapter
    trainer.model.save_pretrained(partial, selected_adapters=["default"])
    return {
        "final_loss": progress.last.get("loss"), "mean_loss": result.training_loss, "steps": result.global_step,
        "tokens_seen": progress.last.get("tokens", 0), "train_seconds": round(seconds, 3),
    }


def _manifest(config: TrainConfig, counts: dict[str, int], stats: dict[str, Any]) -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "format": "carecycle-adapter/1", "method": config.method, "base_model": config.base_model,
        "init_adapter": config.init_adapter, "config": config.to_dict(),
        "dataset": {"path": config.dataset, "snapshot_id": config.dataset_snapshot_id, **counts},
        **stats, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "libraries": {name: version(name) for name in ("torch", "transformers", "trl", "peft")},
    }


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train one KTO or DPO LoRA adapter (see retrain.training.config).")
    parser.add_argument("--config", required=True, type=Path, help="a TrainConfig as JSON")
    args = parser.parse_args(argv)
    emit("start", pid=os.getpid())
    try:
        manifest = main(TrainConfig.from_json(args.config))
    except TooFewRowsError as exc:
        emit("skipped", reason=str(exc))
        return EXIT_SKIPPED
    except CarecycleError as exc:
        emit("error", reason=str(exc))
        return EXIT_REFUSED
    emit("done", adapter=manifest["config"]["output_dir"], checksum=manifest["checksum"])
    return 0


if __name__ == "__main__":
    sys.exit(cli())
