"""LocalEngine's adapter interface: load beside, activate, keep in-flight answers, unload."""

import asyncio

import pytest

from serve.engine import GenerationParams
from serve.errors import AdapterError

GREEDY = GenerationParams(max_tokens=8, temperature=0.0)
PROMPT = [{"role": "user", "content": "the patient has a cough"}]


def answer(engine) -> tuple[str, str | None]:
    async def run():
        generation = engine.generate(PROMPT, GREEDY)
        text = "".join([delta async for delta in generation])
        return text, generation.adapter_version

    return asyncio.run(run())


@pytest.fixture
def random_adapter(tmp_path, tiny_model_dir):
    """A LoRA adapter with random (non-zero) weights, so it visibly changes the output."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    path = tmp_path / "adapter"
    get_peft_model(model, config).save_pretrained(path)
    return str(path)


@pytest.fixture
def engine(tiny_model_dir):
    from serve.local_engine import LocalEngine

    return LocalEngine(str(tiny_model_dir), model_id="tiny")  # its own model: adapters change it


def test_adapter_lifecycle(engine, random_adapter):
    base_text, base_version = answer(engine)
    assert base_version is None
    engine.load_adapter("v1", random_adapter)
    assert answer(engine) == (base_text, None)  # loaded is not active
    engine.activate_adapter("v1")
    adapted_text, version = answer(engine)
    assert version == "v1" and adapted_text != base_text
    engine.load_adapter("v2", random_adapter)
    with pytest.raises(AdapterError, match="already loaded; versions are never reused"):
        engine.load_adapter("v1", random_adapter)
    with pytest.raises(AdapterError, match="is active"):
        engine.unload_adapter("v1")
    with pytest.raises(AdapterError, match="not loaded"):
        engine.activate_adapter("v9")
    engine.activate_adapter(None)
    assert answer(engine) == (base_text, None)  # back to the base model exactly
    engine.unload_adapter("v1")
    assert engine.health()["adapters"] == ["v2"]


def test_a_corrupt_adapter_is_refused_and_nothing_changes(engine, tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter_config.json").write_text("{nope")
    base = answer(engine)
    with pytest.raises(AdapterError, match="cannot load adapter 'bad-1'"):
        engine.load_adapter("bad-1", str(tmp_path / "bad"))
    assert answer(engine) == base and engine.health()["adapters"] == []


def test_an_answer_in_flight_keeps_its_adapter(engine, random_adapter):
    engine.load_adapter("v1", random_adapter)

    async def run():
        generation = engine.generate(PROMPT, GenerationParams(max_tokens=20, temperature=0.0))
        engine.activate_adapter("v1")  # promoted while the first answer is under way
        text = "".join([delta async for delta in generation])
        return generation.adapter_version, text

    version, text = asyncio.run(run())
    assert version is None
    assert text.startswith(answer_with(engine, None, 20))


def answer_with(engine, version, tokens):
    engine.activate_adapter(version)

    async def run():
        generation = engine.generate(PROMPT, GenerationParams(max_tokens=tokens, temperature=0.0))
        return "".join([delta async for delta in generation])

    return asyncio.run(run())


def test_unloading_an_adapter_in_use_waits_for_its_answers(engine, random_adapter):
    engine.load_adapter("v1", random_adapter)
    engine.activate_adapter("v1")
    expected = answer_with(engine, "v1", 20)

    async def run():
        generation = engine.generate(PROMPT, GenerationParams(max_tokens=20, temperature=0.0))
        engine.activate_adapter(None)
        engine.unload_adapter("v1")  # rolled back while the answer is under way
        assert "v1" in engine.health()["adapters"]  # still there for the answer in flight
        return generation.adapter_version, "".join([delta async for delta in generation])

    assert asyncio.run(run()) == ("v1", expected)
    assert engine.health()["adapters"] == []  # gone once its last answer ended
