"""Serve a LoRA adapter merged into the weights, switching versions without writing the base.

peft runs an unmerged LoRA as an extra branch on every adapted layer, which cost the embedded
engine about a third more time per token (issue 14). Here each adapted layer computes with
one weight: the base weight as loaded, or a merged copy, base + the adapter's delta, that
peft's own ``merge`` writes. Switching versions only points each layer at the right tensor:
the base tensors are never written, so after any promotions and rollbacks the base model is
bit-identical to the one loaded, and a rollback to the base model costs nothing. The merged
copy holds one adapter at a time (one copy of the adapted weights while any adapter is loaded):
going back to the adapter it holds costs nothing either; another adapter is merged into it
afresh (milliseconds to a second on a CPU, see benchmarks/README.md).

Only plain LoRA merges this way: adapters with a LoRA variant (DoRA and the like) or a LoRA
bias are refused when they are loaded (see ``unmergeable``).
"""

from __future__ import annotations

from typing import Any


def _lora_layers(model: Any) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [module for module in model.modules() if isinstance(module, LoraLayer)]


def unmergeable(model: Any, version: str) -> str | None:
    """Why ``version`` (loaded in peft ``model``) cannot be served merged, or None if it can."""
    for layer in _lora_layers(model):
        if version in layer.lora_variant:
            return f"it uses a LoRA variant ({type(layer.lora_variant[version]).__name__})"
        if layer.lora_bias.get(version):
            return "it trains a LoRA bias"
    return None


class MergedWeights:
    """Which version a peft model's adapted layers compute with; the caller serialises calls
    (the engine holds its model lock) and makes them between generations."""

    def __init__(self) -> None:
        self._base: dict[Any, Any] = {}  # adapted layer -> its weight as loaded (never written)
        self._merged: dict[Any, Any] = {}  # adapted layer -> the merged copy
        self._merged_version: str | None = None  # the adapter the merged copies hold
        self.holds: str | None = None  # the version the layers compute with now (None: the base)

    def hold(self, model: Any, version: str | None) -> None:
        """Make ``model``'s adapted layers compute with ``version`` merged in (None: the base
        weights). A layer seen for the first time has never been merged: its weight is the base."""
        if version == self.holds:
            return
        layers = _lora_layers(model)
        for layer in layers:
            base = self._base.setdefault(layer, layer.base_layer.weight)
            layer.base_layer.weight = base
            layer.merged_adapters.clear()
        self.holds = None
        if version is None:
            return
        model.set_adapter(version)  # while nothing is merged (peft would unmerge): layers
        # that ``version`` leaves alone then run no other adapter's branch
        refill = self._merged_version != version
        self._merged_version = None  # until every copy holds ``version``
        for layer in layers:
            if version in layer.lora_A:
                self._point_at_merged(layer, version, refill)
        self._merged_version = self.holds = version

    def _point_at_merged(self, layer: Any, version: str, refill: bool) -> None:
        import torch

        merged = self._merged.get(layer)
        if merged is None:
            merged = self._merged[layer] = torch.nn.Parameter(torch.empty_like(self._base[layer]), requires_grad=False)
            refill = True
        layer.base_layer.weight = merged
        if refill:
            with torch.no_grad():
                merged.copy_(self._base[layer])
            layer.merge(adapter_names=[version])  # peft adds the delta in place, and notes the layer as merged
        else:
            layer.merged_adapters.append(version)

    def forget(self, model: Any, version: str) -> None:
        """Before ``version`` is deleted from ``model``: compute with the base weights again and
        free the merged copies of layers no other adapter uses."""
        self.hold(model, None)
        if self._merged_version == version:
            self._merged_version = None
        for layer in _lora_layers(model):
            if set(layer.lora_A) <= {version}:
                self._merged.pop(layer, None)
