"""Refuse an adapter trained for another base model before anything is generated with it.

The check reads only file headers: adapter_config.json, the adapter's tensor shapes and the
base model's tensor shapes (safetensors headers, no weights loaded). Every LoRA matrix must
sit on a module the base model has, with matching input and output sizes.
"""

from __future__ import annotations

import json
from pathlib import Path

from feedback.errors import CarecycleError

ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
MAX_NAMED = 5


class AdapterMismatchError(CarecycleError):
    """An adapter that does not fit the base model it would be loaded on."""


def check_adapter_matches(adapter_dir: str | Path, base_model_dir: str | Path) -> None:
    """Raise AdapterMismatchError unless every LoRA weight fits ``base_model_dir``'s modules."""
    adapter_dir, base_model_dir = Path(adapter_dir), Path(base_model_dir)
    config = _adapter_config(adapter_dir)
    base_shapes = _tensor_shapes(sorted(base_model_dir.glob("*.safetensors")), base_model_dir)
    adapter_shapes = _tensor_shapes([adapter_dir / ADAPTER_WEIGHTS], adapter_dir)
    problems = [p for key, shape in adapter_shapes.items() if (p := _problem(key, shape, base_shapes))]
    if problems:
        trained_on = config.get("base_model_name_or_path") or "an unrecorded base model"
        more = f" (and {len(problems) - MAX_NAMED} more)" if len(problems) > MAX_NAMED else ""
        raise AdapterMismatchError(
            f"the adapter in {adapter_dir} (trained on {trained_on}) does not fit the base model in "
            f"{base_model_dir}: {'; '.join(problems[:MAX_NAMED])}{more}"
        )


def _adapter_config(adapter_dir: Path) -> dict:
    path = adapter_dir / "adapter_config.json"
    if not path.is_file():
        raise AdapterMismatchError(f"{adapter_dir} is not an adapter folder: it has no adapter_config.json")
    config = json.loads(path.read_text())
    if config.get("peft_type") != "LORA":
        raise AdapterMismatchError(f"the adapter in {adapter_dir} is {config.get('peft_type')}, not LoRA")
    return config


def _tensor_shapes(files: list[Path], folder: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    if not files or not all(path.is_file() for path in files):
        raise AdapterMismatchError(f"{folder} has no safetensors weights to check")
    shapes = {}
    for path in files:
        with safe_open(str(path), framework="pt") as weights:
            shapes.update({key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()})
    return shapes


def _problem(key: str, shape: tuple[int, ...], base_shapes: dict[str, tuple[int, ...]]) -> str | None:
    """What is wrong with one adapter tensor, or None (tensors other than LoRA A/B pass)."""
    for marker, base_axis, adapter_axis in (
        (".lora_A.", 1, 1),  # [r, in] against the base [out, in]
        (".lora_B.", 0, 0),  # [out, r]
        (".lora_embedding_A.", 0, 1),  # [r, vocab] against the base [vocab, dim]
        (".lora_embedding_B.", 1, 0),  # [dim, r]
    ):
        if marker in key:
            module = key.removeprefix(PEFT_PREFIX).split(marker)[0]
            base = base_shapes.get(f"{module}.weight")
            if base is None:
                return f"the base model has no module {module}"
            if base[base_axis] != shape[adapter_axis]:
                return f"{module} is {list(base)} in the base model but the adapter expects size {shape[adapter_axis]}"
            return None
    return None
