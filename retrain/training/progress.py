"""A TrainerCallback that emits one progress event per logged step (see `events`)."""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

from retrain.training.events import emit


class JsonProgress(TrainerCallback):
    """Emit step, loss, tokens seen (TRL's `num_tokens`) and seconds since the training loop began."""

    def __init__(self) -> None:
        self.started = 0.0
        self.last: dict[str, Any] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        self.last = {
            "step": state.global_step, "total": state.max_steps, "loss": logs["loss"],
            "tokens": int(logs.get("num_tokens", 0)), "elapsed_s": round(time.perf_counter() - self.started, 4),
        }
        emit("progress", **self.last)
