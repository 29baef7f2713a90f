"""BEMA weight averaging for LoRA runs (``TrainConfig.bema``).

TRL's ``BEMACallback`` (bias-corrected exponential moving average of the weights, Block & Zhang
2025) copies the whole model to hold the averaged weights, which fails on a PEFT model (its
class cannot be rebuilt from a config) and would save a full model besides the adapter. This
subclass keeps TRL's schedule and update rule (``on_step_end``, ``_ema_beta``, ``_bema_alpha``)
but holds the averaged values of the trainable (LoRA) parameters only, and writes them into the
model when training ends, so the adapter that is saved is the averaged one.

Imported by the training subprocess only (it imports torch and trl).
"""

from __future__ import annotations

import torch
from trl import BEMACallback

# carecycle's defaults: a cycle trains tens of steps, not TRL's thousands (update_freq 400)
DEFAULTS = {"update_freq": 1}


class LoraBEMA(BEMACallback):
    def __init__(self, **options):
        super().__init__(**{**DEFAULTS, **options})
        self.bema_params: list[torch.Tensor] = []
        self.updates = 0

    @torch.no_grad()
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        for name, param in self._unwrap_model(model).named_parameters():
            if param.requires_grad:
                self.param_names.append(name)
                self.thetat_params.append(param)
                self.theta0_params.append(param.detach().clone().to(self.device))
                self.ema_params.append(param.detach().clone().to(self.device))
                self.bema_params.append(param.detach().clone().to(self.device))

    @torch.no_grad()
    def _update_bema_weights(self, step: int) -> None:
        beta, alpha = self._ema_beta(step), self._bema_alpha(step)
        for thetat, theta0, ema, bema in zip(
            self.thetat_params, self.theta0_params, self.ema_params, self.bema_params, strict=True
        ):
            thetat = thetat.detach().to(self.device)
            ema.mul_(1 - beta).add_(thetat, alpha=beta)
            bema.copy_(ema + alpha * (thetat - theta0))
        self.updates += 1

    @torch.no_grad()
    def on_train_end(self, args, state, control, **kwargs):
        if self.updates:  # no update yet (fewer steps than update_freq): the trained weights stay
            for param, bema in zip(self.thetat_params, self.bema_params, strict=True):
                param.copy_(bema.to(param.device, param.dtype))
