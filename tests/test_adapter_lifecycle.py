"""Adapters at base speed and one owner of their lifecycle (issue 14, part 2): the embedded
engine serves an adapter merged into the weights, with the answers of peft's unmerged LoRA;
switching versions never writes the base weights; ``engine.adapters`` loads, keeps the active
and previous versions, and unloads a version once its last answer has ended."""

import asyncio
import hashlib
import json
import threading
import time

import httpx
import pytest

from serve.adapters import AdapterRef
from serve.engine import GenerationParams
from tests.conftest import start_server, wait_for
from tests.test_adapter_integrity import register, trained_adapter
from tests.test_evaluation import lora_adapter

PROMPTS = [[{"role": "user", "content": text}] for text in (
    "the patient has a cough", "fever for two days", "is ibuprofen safe for a child", "a rash after a new tablet",
)]


@pytest.fixture
def engine(tiny_model_dir):
    from serve.local_engine import LocalEngine

    return LocalEngine(str(tiny_model_dir), model_id="tiny")  # its own: adapters change it


@pytest.fixture
def two_adapters(tiny_model_dir, tmp_path):
    """Random LoRA adapters on different layers: "a" on q and v, "b" on q, v and o."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    a = lora_adapter(tiny_model_dir, tmp_path / "a")
    config = LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config).save_pretrained(tmp_path / "b")
    return {"a": str(a), "b": str(tmp_path / "b")}


def base_checksum(model) -> str:
    """A digest of the base model's weights, by name, whether or not peft wraps the model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    digest = hashlib.sha256()
    for name, tensor in sorted(base.state_dict().items()):
        if "lora_" not in name:
            digest.update(name.replace(".base_layer", "").encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def unmerged_answers(tiny_model_dir, path, tokenizer, max_tokens):
    """What peft's own unmerged LoRA answers (the reference the merged weights must give)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from serve.batch_generation import generate_batch

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), path).eval()
    return model, generate_batch(model, tokenizer, PROMPTS, max_tokens)


def test_merged_answers_equal_unmerged_answers(engine, two_adapters, tiny_model_dir):
    import torch
    from peft.tuners.lora import LoraLayer

    engine.adapters.keep(AdapterRef("a", two_adapters["a"]))
    engine.adapters.keep(AdapterRef("b", two_adapters["b"]))
    base = engine.generate_batch(PROMPTS, 16, adapter=None)
    for version in ("a", "b", "a"):  # "a" again: merged afresh after "b"
        merged = engine.generate_batch(PROMPTS, 16, adapter=version)
        layers = [m for m in engine.model.modules() if isinstance(m, LoraLayer) and version in m.lora_A]
        assert layers and all(layer.merged for layer in layers)  # served merged: no LoRA branch ran
        reference, unmerged = unmerged_answers(tiny_model_dir, two_adapters[version], engine.tokenizer, 16)
        assert merged == unmerged and merged != base
        ids = engine.tokenizer.apply_chat_template(PROMPTS[0], add_generation_prompt=True, return_tensors="pt",
                                                   return_dict=True)["input_ids"]
        with torch.inference_mode(), engine._model_lock, engine._using(version) as model:
            merged_logits = model(ids).logits
        with torch.inference_mode():
            torch.testing.assert_close(merged_logits, reference(ids).logits, atol=1e-3, rtol=1e-3)
    assert engine.generate_batch(PROMPTS, 16, adapter=None) == base  # "b"'s extra layers run no branch either


def answer(engine, adapter, max_tokens=12) -> str:
    async def run():
        generation = engine.generate(PROMPTS[1], GenerationParams(max_tokens=max_tokens, temperature=0.0),
                                     adapter=adapter)
        return "".join([delta async for delta in generation])

    return asyncio.run(run())


def test_promote_rollback_promote_leaves_the_base_weights_bit_identical(settings, engine, tiny_model_dir):
    from deploy.promotion import promote, rollback
    from feedback.registry_record import RegistryRecord
    from feedback.store import Store

    loaded = base_checksum(engine.model)
    base_answer = answer(engine, None)
    with Store(settings.record_path) as store:
        registry = RegistryRecord(store)
        for version in ("kto-1", "kto-2"):
            folder = settings.adapters_dir / version
            register(registry, version, folder, trained_adapter(tiny_model_dir, folder))
        promote(engine, registry, "kto-1", "test")
        first = answer(engine, "kto-1")
        rollback(engine, registry, "test")
        assert answer(engine, None) == base_answer and base_checksum(engine.model) == loaded
        promote(engine, registry, "kto-1", "test")
        promote(engine, registry, "kto-2", "test")  # kto-1 stays loaded as the previous version
        assert engine.loaded_adapters() == ["kto-1", "kto-2"] and engine.adapters.previous == "kto-1"
        assert answer(engine, "kto-2") != first and answer(engine, "kto-1") == first
        assert answer(engine, None) == base_answer and base_checksum(engine.model) == loaded  # adapters loaded
        rollback(engine, registry, "test")  # to kto-1; kto-2 is retired and unloaded
        assert engine.loaded_adapters() == ["kto-1"] and answer(engine, "__active__") == first
        rollback(engine, registry, "test")  # to the base model: nothing stays loaded
        assert engine.active_adapter is None and engine.loaded_adapters() == []
    assert answer(engine, None) == base_answer
    assert base_checksum(engine.model) == loaded and not hasattr(engine.model, "get_base_model")


def test_an_answer_streaming_on_a_when_b_is_activated_finishes_on_a(settings, engine, two_adapters):
    """The answer in flight ends on A and is recorded with A; A is unloaded after that answer
    (not before), and the next answer uses B."""
    body = {"messages": [{"role": "user", "content": "the patient has a fever, what dose?"}], "max_tokens": 24,
            "temperature": 0.0}
    with start_server(settings, engine) as live:
        engine.adapters.activate(AdapterRef("A", two_adapters["a"]))  # after the start, which serves the registry's
        on_a = httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=120).json()
        assert on_a["adapter_version"] == "A" and on_a["usage"]["completion_tokens"] == 24
        expected = on_a["choices"][0]["message"]["content"]
        engine.adapters.load(AdapterRef("B", two_adapters["b"]))  # beside A before the switch, as promote does
        inner = engine.model.get_base_model()
        forward = inner.forward

        def slow_forward(*args, **kwargs):  # a token every 0.1 s, so that the switch surely lands mid-answer
            time.sleep(0.1)
            return forward(*args, **kwargs)

        inner.forward = slow_forward
        body["stream"] = True
        parts, answer_id, switched = [], None, threading.Event()
        with httpx.stream("POST", f"{live.url}/v1/chat/completions", json=body, timeout=120) as response:
            for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[len("data: "):])
                answer_id = chunk["id"]
                text = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
                if text and not switched.is_set():
                    engine.adapters.activate(AdapterRef("B", two_adapters["b"]))  # no previous kept: A goes
                    assert engine.active_adapter == "B" and "A" in engine.loaded_adapters()  # the answer uses it
                    switched.set()
                parts.append(text or "")
        assert switched.is_set() and "".join(parts) == expected
        stored = live.store.read("SELECT adapter_version, content FROM messages WHERE id = ?", [answer_id])
        assert stored == [{"adapter_version": "A", "content": expected}]
        wait_for(lambda: engine.loaded_adapters() == ["B"], what="A unloaded after its last answer")
        after = httpx.post(f"{live.url}/v1/chat/completions", json={**body, "stream": False}, timeout=120).json()
        assert after["adapter_version"] == "B"


def test_vllm_unloads_a_version_only_after_its_last_stream():
    """vLLM cannot run in this tier (tests/test_vllm_engine.py runs the real one): its HTTP API
    is stood in for by httpx's MockTransport, with a stream that waits for the test."""
    from serve.vllm_engine import VLLMEngine

    unloaded: list[str] = []

    async def run():
        more = asyncio.Event()

        async def stream():
            yield b'data: {"choices": [{"delta": {"content": "one"}}]}\n\n'
            await more.wait()
            yield b'data: {"choices": [{"delta": {"content": " two"}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'

        def vllm(request: httpx.Request) -> httpx.Response:
            if request.url.path == "/v1/unload_lora_adapter":
                unloaded.append(json.loads(request.content)["lora_name"])
            return httpx.Response(200, content=stream()) if request.url.path == "/v1/chat/completions" else (
                httpx.Response(200, json={}))

        engine = VLLMEngine("http://vllm.test", "tiny")
        engine._client = httpx.Client(base_url=engine.base_url, transport=httpx.MockTransport(vllm))
        engine._async_client = httpx.AsyncClient(base_url=engine.base_url, transport=httpx.MockTransport(vllm))
        engine._async_loop = asyncio.get_running_loop()
        engine.adapters.activate(AdapterRef("v1", "/adapters/v1"))
        generation = engine.generate(PROMPTS[0], GenerationParams(max_tokens=8))
        first = await anext(generation.deltas)
        engine.adapters.activate(None)  # v1 is neither active nor kept as the previous version
        assert engine.loaded_adapters() == ["v1"] and unloaded == []  # its answer still streams
        more.set()
        text = first + "".join([delta async for delta in generation])
        for _ in range(100):  # the unload runs off the event loop
            if unloaded:
                break
            await asyncio.sleep(0.05)
        return text, generation.adapter_version, engine.loaded_adapters()

    assert asyncio.run(run()) == ("one two", "v1", [])
    assert unloaded == ["v1"]  # vLLM's name for a version is the version


class SharedVLLM:
    """vLLM's adapter API as several carecycle processes see it: vLLM cannot run in this tier
    (tests/test_vllm_engine.py runs the real one), so its HTTP API is stood in for by httpx's
    MockTransport, answering as vLLM does (400 "has already been loaded" for a name it holds, 404
    for a model it does not serve)."""

    def __init__(self) -> None:
        self.held: dict[str, str] = {}  # name -> path
        self.loads: list[str] = []
        self.asked: list[str] = []  # the model of each chat request

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content or b"{}")
        if request.url.path == "/v1/load_lora_adapter":
            if body["lora_name"] in self.held:
                return httpx.Response(400, json={"message": f"The lora adapter '{body['lora_name']}' has already been loaded."})
            self.loads.append(body["lora_name"])
            self.held[body["lora_name"]] = body["lora_path"]
        elif request.url.path == "/v1/unload_lora_adapter":
            self.held.pop(body["lora_name"])
        elif request.url.path == "/v1/chat/completions":
            self.asked.append(body["model"])
            if body["model"] not in {"tiny", *self.held}:
                return httpx.Response(404, json={"error": {"message": f"The model `{body['model']}` does not exist."}})
            return httpx.Response(200, content=b'data: {"choices": [{"delta": {"content": "ok"}}]}\n\ndata: [DONE]\n\n')
        return httpx.Response(200, json={})

    def engine(self, frees_adapters: bool):
        from serve.vllm_engine import VLLMEngine

        engine = VLLMEngine("http://vllm.test", "tiny", frees_adapters=frees_adapters)
        engine._client = httpx.Client(base_url=engine.base_url, transport=httpx.MockTransport(self))
        engine._async_client = httpx.AsyncClient(base_url=engine.base_url, transport=httpx.MockTransport(self))
        return engine


def test_replicas_sharing_vllm_load_a_version_once_and_only_the_worker_frees_it():
    vllm = SharedVLLM()
    first, second, worker = vllm.engine(False), vllm.engine(False), vllm.engine(True)

    async def answer(engine) -> tuple[str, str | None]:
        engine._async_loop = asyncio.get_running_loop()
        generation = engine.generate(PROMPTS[0], GenerationParams(max_tokens=4))
        return "".join([delta async for delta in generation.deltas]), generation.adapter_version

    v1, v2, v3 = (AdapterRef(version, f"/adapters/{version}") for version in ("v1", "v2", "v3"))
    for engine in (worker, first, second):  # the worker promotes v1; both replicas follow
        engine.adapters.activate(v1)
    assert vllm.loads == ["v1"] and vllm.held == {"v1": "/adapters/v1"}
    assert [asyncio.run(answer(engine)) for engine in (first, second)] == [("ok", "v1"), ("ok", "v1")]
    assert vllm.asked == ["v1", "v1"]  # both ask for the one copy by the version's name

    for active, previous in ((v2, v1), (v3, v2)):  # two promotions: v1 is retired
        for engine in (first, second):
            engine.adapters.activate(active, previous)
    assert [first.loaded_adapters(), second.loaded_adapters()] == [["v2", "v3"], ["v2", "v3"]]
    assert set(vllm.held) == {"v1", "v2", "v3"} and vllm.loads == ["v1", "v2", "v3"]  # replicas free nothing
    for active, previous in ((v2, v1), (v3, v2)):
        worker.adapters.activate(active, previous)
    assert set(vllm.held) == {"v2", "v3"} and vllm.loads == ["v1", "v2", "v3"]  # the worker freed the retired v1

    del vllm.held["v3"]  # vLLM restarted and lost it: the next request loads it again, under the same name
    assert asyncio.run(answer(first)) == ("ok", "v3") and vllm.loads[-1] == "v3" and "v3" in vllm.held


def test_beside_an_external_worker_only_the_worker_frees_adapters_in_vllm(settings):
    from deploy.app import build_engine

    shared = settings.model_copy(update={"engine": "vllm", "vllm_api_key": "k", "worker": "external",
                                         "database_url": "postgresql://u@127.0.0.1/record"})
    alone = shared.model_copy(update={"worker": "embedded", "database_url": None})
    assert [build_engine(shared).frees_adapters, build_engine(shared, worker=True).frees_adapters,
            build_engine(alone).frees_adapters] == [False, True, True]
