"""BEMA weight averaging (TrainConfig.bema) on the tiny Llama: it runs on a LoRA model, and the
adapter it saves is the averaged one, not the last step's."""

from __future__ import annotations

import pytest

from retrain.training import TrainConfigError
from tests.test_training import _assert_trained, _config, _lora_tensors, _train, data_dir, kto_run  # noqa: F401


def test_bema_saves_the_averaged_lora_weights(tiny_model_dir, data_dir, kto_run, tmp_path):  # noqa: F811
    config = _config(tiny_model_dir, data_dir / "kto.jsonl", tmp_path / "bema", bema={})
    result, events = _train(config)
    _assert_trained(result, events, {"rows": 6, "desirable": 3, "undesirable": 3})
    assert result.manifest["config"]["bema"] == {}
    plain, averaged = _lora_tensors(kto_run[0].adapter_path, "B"), _lora_tensors(result.adapter_path, "B")
    assert plain.keys() == averaged.keys()
    # same seed, data and steps: only the averaging differs
    assert all(not plain[k].equal(averaged[k]) for k in plain)


def test_bema_refuses_unknown_options(tiny_model_dir, tmp_path):
    with pytest.raises(TrainConfigError, match="bema has unknown option"):
        _config(tiny_model_dir, tmp_path / "kto.jsonl", tmp_path / "out", bema={"decay": 0.9})
