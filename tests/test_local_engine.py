"""LocalEngine: adapters (load beside, activate, keep in-flight answers, unload), concurrent chats
batched together, device selection, and an event loop that never waits for the model."""

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


PROMPTS = [[{"role": "user", "content": text}] for text in (
    "the patient has a cough", "fever for two days", "is ibuprofen safe for a child", "blood pressure at night",
    "a rash after a new tablet", "how much water a day",
)]


def record_batches(engine) -> list[list[tuple[str | None, int]]]:
    """Spy on the engine's batches: (adapter, max_tokens) of every row, batch by batch. The
    admission window grows to a second, so that requests started together surely meet in it
    on a loaded machine (they are all queued within milliseconds)."""
    engine.admission_window_s = 1.0
    batches: list[list[tuple[str | None, int]]] = []
    generate_rows = engine._generate_rows

    def recording(batch):
        batches.append([(r.generation.adapter_version, r.params.max_tokens) for r in batch])
        return generate_rows(batch)

    engine._generate_rows = recording
    return batches


async def answer_all(engine, requests):
    """Start every (prompt, params, adapter) at once, then read all the answers."""
    generations = [engine.generate(prompt, params, adapter=adapter) for prompt, params, adapter in requests]

    async def text(generation):
        return "".join([delta async for delta in generation])

    return await asyncio.gather(*(text(g) for g in generations)), generations


def one_by_one(engine, requests) -> list[str]:
    return [asyncio.run(answer_all(engine, [request]))[0][0] for request in requests]


def test_concurrent_greedy_answers_equal_one_by_one_answers(engine):
    requests = [(prompt, GenerationParams(max_tokens=6 + 3 * i, temperature=0.0), None) for i, prompt in enumerate(PROMPTS)]
    sequential = one_by_one(engine, requests)
    batches = record_batches(engine)
    together, generations = asyncio.run(answer_all(engine, requests))
    assert together == sequential
    assert [len(b) for b in batches] == [len(requests)]  # generated as one batch, each with its own limit
    assert [g.completion_tokens for g in generations] == [6 + 3 * i for i in range(len(requests))]
    assert all(g.finish_reason == "length" for g in generations)


def test_a_client_that_leaves_mid_batch_does_not_disturb_the_others(engine):
    long = GenerationParams(max_tokens=24, temperature=0.0)
    requests = [(prompt, long, None) for prompt in PROMPTS[:4]]
    sequential = one_by_one(engine, requests)
    batches = record_batches(engine)

    async def run():
        generations = [engine.generate(prompt, params, adapter=adapter) for prompt, params, adapter in requests]
        leaver = generations[1]
        await anext(aiter(leaver))  # one token, then the client goes (as ChatService does on a disconnect)
        leaver.cancelled.set()
        return [await _text(g) for g in generations], generations

    texts, generations = asyncio.run(run())
    assert [len(b) for b in batches] == [4]
    assert [texts[i] for i in (0, 2, 3)] == [sequential[i] for i in (0, 2, 3)]
    assert generations[1].completion_tokens < 24 and generations[1].finish_reason == "stop"


async def _text(generation) -> str:
    return "".join([delta async for delta in generation])


def test_adapters_never_mix_inside_a_batch(engine, random_adapter):
    engine.load_adapter("v1", random_adapter)
    greedy = GenerationParams(max_tokens=10, temperature=0.0)
    requests = [(prompt, greedy, "v1" if i % 2 else None) for i, prompt in enumerate(PROMPTS)]
    sequential = one_by_one(engine, requests)
    batches = record_batches(engine)
    together, generations = asyncio.run(answer_all(engine, requests))
    assert together == sequential
    assert [g.adapter_version for g in generations] == [r[2] for r in requests]
    assert sorted(len(b) for b in batches) == [3, 3]  # one batch per adapter
    assert all(len({adapter for adapter, _ in batch}) == 1 for batch in batches)
    assert together[0] != asyncio.run(answer_all(engine, [(PROMPTS[0], greedy, "v1")]))[0][0]  # v1 changes answers


def test_seeded_sampling_gives_the_same_answer_alone_or_among_others(engine):
    seeded = GenerationParams(max_tokens=12, temperature=1.0, seed=7)
    alone = one_by_one(engine, [(PROMPTS[0], seeded, None)])[0]
    others = [(prompt, GenerationParams(max_tokens=12, temperature=0.0), None) for prompt in PROMPTS[1:4]]
    together, _ = asyncio.run(answer_all(engine, [(PROMPTS[0], seeded, None), *others]))
    assert together[0] == alone


def test_device_selection_picks_the_cpu_here_and_says_why(engine):
    from serve.errors import ModelLoadError
    from serve.local_engine import select_device

    assert engine.health()["device"] == "cpu"
    assert "sees no CUDA device" in engine.health()["device_reason"]
    assert select_device("cpu") == ("cpu", "CARECYCLE_DEVICE=cpu")
    with pytest.raises(ModelLoadError, match="CARECYCLE_DEVICE=cuda, but torch .* sees no CUDA device"):
        select_device("cuda")
    assert str(next(engine.model.parameters()).dtype) == "torch.float32"


def test_training_dtype_auto_is_float32_without_a_gpu():
    from retrain.training.train import model_dtype

    assert model_dtype("auto") == "float32"  # bfloat16 where torch sees CUDA
    assert model_dtype("bfloat16") == "bfloat16"


def test_health_answers_while_an_adapter_load_waits_behind_a_long_answer(engine, random_adapter, settings):
    """The event loop never waits for the model: an adapter load queued behind a long answer,
    and a chat that arrives meanwhile, leave /healthz answering (a liveness check with a client
    timeout, not a timing assertion)."""
    import threading
    import time

    import httpx

    from tests.conftest import start_server

    forward = engine.model.forward

    def slow_forward(*args, **kwargs):  # stands in for a large model on a CPU: 0.25 s a token
        time.sleep(0.25)
        return forward(*args, **kwargs)

    engine.model.forward = slow_forward
    with start_server(settings, engine) as live:
        first_token, results = threading.Event(), {}

        def long_chat():
            body = {"messages": PROMPTS[0], "max_tokens": 60, "temperature": 0.0, "stream": True}
            with httpx.stream("POST", f"{live.url}/v1/chat/completions", json=body, timeout=120) as response:
                for line in response.iter_lines():
                    if '"content"' in line:
                        first_token.set()
                results["long"] = response.status_code

        def load():
            engine.load_adapter("v1", random_adapter)

        def another_chat():
            body = {"messages": PROMPTS[1], "max_tokens": 2, "temperature": 0.0}
            results["another"] = httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=120).status_code

        chat_thread, load_thread, another_thread = (threading.Thread(target=f) for f in (long_chat, load, another_chat))
        chat_thread.start()
        assert first_token.wait(60)
        load_thread.start()  # waits for the model, which the long answer holds
        another_thread.start()  # a chat that arrives meanwhile takes its turn after them
        answered_while_loading = 0
        while load_thread.is_alive():  # until the long answer ends and the load goes ahead
            health = httpx.get(f"{live.url}/healthz", timeout=5)
            assert health.status_code == 200
            answered_while_loading += load_thread.is_alive()
            time.sleep(0.3)
        assert answered_while_loading >= 3  # the situation did arise: /healthz answered while the load waited
        for thread in (chat_thread, load_thread, another_thread):
            thread.join(120)
        assert results == {"long": 200, "another": 200}
        assert engine.loaded_adapters() == ["v1"]
