"""Training: KTO and DPO really train the tiny Llama in a child process; the folder is verified.

A training process costs ~8 s (mostly imports), so three runs do all the heavy checks: KTO from
a fresh LoRA, DPO continuing from that KTO adapter (a cycle's real path), and one killed run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from retrain.training import AdapterIntegrityError, TrainConfig, TrainConfigError, run_training, verify_adapter
from retrain.training.adapter_folder import MANIFEST, partial_path

QUESTIONS = ["fever in a child", "ibuprofen dose", "chest pain", "sleep help", "blood pressure", "allergy tablet"]
SAFE, UNSAFE = "please consult the doctor or call the clinic", "take any dose every hours"


def _prompt(question: str) -> list[dict]:
    return [{"role": "user", "content": f"what about {question}?"}]


def _kto_rows(count: int) -> list[dict]:
    return [
        {"prompt": _prompt(q), "completion": [{"role": "assistant", "content": SAFE if i % 2 else UNSAFE}],
         "label": bool(i % 2), "message_ids": [f"m{i}"], "source": "thumbs"}
        for i, q in enumerate(QUESTIONS[:count])
    ]


def _dpo_rows() -> list[dict]:
    return [
        {"prompt": _prompt(q), "chosen": [{"role": "assistant", "content": SAFE}],
         "rejected": [{"role": "assistant", "content": UNSAFE}], "message_ids": [f"c{i}", f"r{i}"]}
        for i, q in enumerate(QUESTIONS[:4])
    ]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    import pyarrow
    import pyarrow.parquet

    folder = tmp_path_factory.mktemp("training-data")
    _write_jsonl(folder / "kto.jsonl", _kto_rows(6))
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(_dpo_rows()), folder / "dpo.parquet")
    return folder


def _config(model: Path, dataset: Path, output_dir: Path, method: str = "kto", **overrides) -> TrainConfig:
    # a large learning rate: 3 steps must visibly move the tiny model
    settings = dict(max_steps=3, per_device_train_batch_size=2, learning_rate=5e-3, max_length=64, torch_threads=1)
    return TrainConfig(method=method, base_model=str(model), dataset=str(dataset), output_dir=str(output_dir),
                       dataset_snapshot_id="snap-1", **{**settings, **overrides})


def _train(config: TrainConfig, **kwargs):
    events: list[dict] = []
    result = run_training(config, on_progress=events.append, **kwargs)
    return result, events


@pytest.fixture(scope="module")
def kto_run(tiny_model_dir, data_dir, tmp_path_factory):
    return _train(_config(tiny_model_dir, data_dir / "kto.jsonl", tmp_path_factory.mktemp("kto") / "adapter"))


@pytest.fixture(scope="module")
def dpo_run(tiny_model_dir, data_dir, kto_run, tmp_path_factory):
    """DPO continuing from the KTO adapter."""
    init = str(kto_run[0].adapter_path)
    output_dir = tmp_path_factory.mktemp("dpo") / "adapter"
    return _train(_config(tiny_model_dir, data_dir / "dpo.parquet", output_dir, "dpo", init_adapter=init))


def _lora_tensors(adapter: Path, part: str) -> dict:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(adapter / "adapter_model.safetensors").items() if f"lora_{part}" in k}


def _assert_trained(result, events, counts: dict, init: Path | None = None) -> None:
    assert result.status == "ok", (result.reason, result.stderr_tail)
    losses = [e["loss"] for e in events if e["event"] == "progress"]
    assert len(losses) == 3 and all(loss == loss for loss in losses)  # logged, not NaN
    manifest = result.manifest
    assert manifest["steps"] == 3 and manifest["tokens_seen"] > 0 and manifest["final_loss"] == losses[-1]
    assert manifest["dataset"] == {"path": manifest["config"]["dataset"], "snapshot_id": "snap-1", **counts}
    trained = _lora_tensors(result.adapter_path, "B")
    if init is None:  # a fresh lora_B starts at zero: every B matrix moved
        assert trained and all(tensor.abs().sum() > 0 for tensor in trained.values())
    else:
        before = _lora_tensors(init, "B")
        assert before.keys() == trained.keys() and all(not before[k].equal(trained[k]) for k in before)
    assert not partial_path(result.adapter_path).exists()


def test_kto_trains_and_writes_a_verified_adapter(kto_run):
    result, events = kto_run
    _assert_trained(result, events, {"rows": 6, "desirable": 3, "undesirable": 3})
    assert result.manifest["method"] == "kto" and result.manifest["init_adapter"] is None
    assert verify_adapter(result.adapter_path)["checksum"] == result.manifest["checksum"]


def test_dpo_continues_from_the_kto_adapter_on_parquet_rows(dpo_run, kto_run):
    (result, events), init = dpo_run, kto_run[0].adapter_path
    _assert_trained(result, events, {"pairs": 4}, init=init)
    assert result.manifest["method"] == "dpo" and result.manifest["init_adapter"] == str(init)
    # only the trained adapter is saved (not TRL's frozen "ref" copy), in the init adapter's shape
    assert sorted(p.name for p in result.adapter_path.iterdir()) == sorted(p.name for p in init.iterdir())
    assert json.loads((result.adapter_path / "adapter_config.json").read_text())["r"] == 16


def test_trained_adapter_changes_greedy_output(tiny_model_dir, kto_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    inputs = tokenizer.apply_chat_template(_prompt("fever in a child"), add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)

    def greedy(model) -> list[int]:
        return model.generate(**inputs, max_new_tokens=12, do_sample=False)[0].tolist()

    base = greedy(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), kto_run[0].adapter_path)
    assert greedy(tuned) != base


def test_killed_run_leaves_no_adapter_folder(tiny_model_dir, data_dir, tmp_path):
    config = _config(tiny_model_dir, data_dir / "kto.jsonl", tmp_path / "adapter", max_steps=500)
    pid = {}

    def kill_after_first_step(event: dict) -> None:
        if event["event"] == "start":
            pid["child"] = event["pid"]
        elif event["event"] == "progress" and event["step"] == 1:
            os.kill(pid["child"], signal.SIGKILL)

    result = run_training(config, on_progress=kill_after_first_step)
    assert result.status == "failed" and "SIGKILL" in result.reason
    assert result.last_progress["step"] == 1
    assert list(tmp_path.iterdir()) == []  # neither the adapter nor its partial folder


def test_timeout_kills_the_run(tiny_model_dir, data_dir, tmp_path):
    result, _ = _train(_config(tiny_model_dir, data_dir / "kto.jsonl", tmp_path / "adapter"), timeout_s=0.5)
    assert result.status == "failed" and "timed out after 0.5 s" in result.reason
    assert list(tmp_path.iterdir()) == []


def test_too_few_rows_is_skipped_with_reason(tiny_model_dir, tmp_path):
    dataset = _write_jsonl(tmp_path / "one.jsonl", _kto_rows(1))
    result, _ = _train(_config(tiny_model_dir, dataset, tmp_path / "adapter"))
    assert result.status == "skipped" and "1 KTO row(s), fewer than one batch of 2" in result.reason
    assert not (tmp_path / "adapter").exists()


@pytest.mark.parametrize(
    ("row_change", "reason"),
    [({"label": "yes"}, "row 0: 'label' must be true or false"),
     ({"completion": "ok"}, "row 0: 'completion' must be a non-empty list of messages"),
     ({"prompt": [{"role": "doctor", "content": "hi"}]}, "row 0: every 'prompt' message needs a role")],
)
def test_malformed_rows_fail_with_the_row_named(tiny_model_dir, tmp_path, row_change, reason):
    dataset = _write_jsonl(tmp_path / "bad.jsonl", [{**row, **row_change} for row in _kto_rows(2)])
    result, _ = _train(_config(tiny_model_dir, dataset, tmp_path / "adapter"))
    assert result.status == "failed" and reason in result.reason


def test_existing_output_dir_is_never_overwritten(tiny_model_dir, data_dir, kto_run):
    result, _ = _train(_config(tiny_model_dir, data_dir / "kto.jsonl", kto_run[0].adapter_path))
    assert result.status == "failed" and "already exists" in result.reason
    verify_adapter(kto_run[0].adapter_path)


def test_verify_adapter_detects_corruption(kto_run, tmp_path):
    adapter = shutil.copytree(kto_run[0].adapter_path, tmp_path / "copy")
    weights = adapter / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterIntegrityError, match=r"checksum mismatch in \['adapter_model.safetensors'\]"):
        verify_adapter(adapter)
    (adapter / MANIFEST).unlink()
    with pytest.raises(AdapterIntegrityError, match="has no carecycle-adapter.json"):
        verify_adapter(adapter)


@pytest.mark.parametrize(
    ("change", "message"),
    [({"method": "sft"}, "method must be one of ('kto', 'dpo')"),
     ({"per_device_train_batch_size": 1}, "KTO needs per_device_train_batch_size >= 2"),
     ({"method": "dpo", "desirable_weight": 2.0}, "apply to KTO only"),
     ({"dataset": "rows.csv"}, "dataset must be a .parquet or .jsonl file"),
     ({"lora_dropout": 1.0}, "lora_dropout must be in [0, 1)"),
     ({"max_steps": 0}, "max_steps must be -1 (run the epochs) or > 0"),
     ({"init_adapter": "out"}, "output_dir must differ from init_adapter"),
     ({"trl_overrides": {"beta": 0.5}}, "set TrainConfig.beta instead"),
     ({"trl_overrides": {"gradient_checkpointing": True}}, "use 'activation_checkpointing'"),
     ({"trl_overrides": {"logging_steps": 5}}, "the training wrapper controls it")],
)
def test_config_refuses_impossible_combinations(change, message):
    fields = {"method": "kto", "base_model": "m", "dataset": "rows.jsonl", "output_dir": "out", **change}
    with pytest.raises(TrainConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        TrainConfig(**fields)


def test_config_round_trips_through_json(tmp_path):
    config = TrainConfig(method="dpo", base_model=Path("m"), dataset="d.parquet", output_dir="o",
                         trl_overrides={"bf16": True})
    assert TrainConfig.from_json(config.to_json(tmp_path / "c.json")) == config
    (tmp_path / "bad.json").write_text(json.dumps({**config.to_dict(), "epochs": 2}))
    with pytest.raises(TrainConfigError, match=r"unknown option\(s\) \['epochs'\]"):
        TrainConfig.from_json(tmp_path / "bad.json")
