"""The chat and feedback API through a real HTTP server on 127.0.0.1 with the tiny model."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.sse import read_events

pytestmark = pytest.mark.both_backends  # tests/conftest.py: DuckDB, then PostgreSQL

QUESTION = {"role": "user", "content": "the patient has a fever, what dose of paracetamol?"}


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def chat(client, *messages, key=None, **extra):
    headers = bearer(key) if key else {}
    return client.post("/v1/chat/completions", json={"messages": list(messages) or [QUESTION], **extra}, headers=headers)


def stored(server, message_id):
    rows = server.store.read("SELECT * FROM messages WHERE id = ?", [message_id])
    assert rows, f"message {message_id} was not stored"
    return rows[0]


def test_non_streaming_answer_is_stored_under_its_completion_id(client, server):
    response = chat(client)
    assert response.status_code == 200
    body = response.json()
    answer = stored(server, body["id"])
    assert answer["role"] == "assistant" and answer["status"] == "complete"
    assert answer["content"] == body["choices"][0]["message"]["content"] != ""
    assert answer["conversation_id"] == body["conversation_id"] == response.headers["x-conversation-id"]
    assert answer["model_id"] == body["model"] == "tiny-llama"
    assert answer["adapter_version"] is None and body["adapter_version"] is None
    assert answer["prompt_tokens"] == body["usage"]["prompt_tokens"] > 0
    assert answer["completion_tokens"] == body["usage"]["completion_tokens"] == 12  # max_tokens of the fixture
    assert body["choices"][0]["finish_reason"] == "length"
    assert answer["latency_ms"] > 0
    question = stored(server, answer["parent_id"])
    assert question["role"] == "user" and question["content"] == QUESTION["content"]
    assert question["conversation_id"] == answer["conversation_id"]


def test_streaming_sends_openai_chunks_and_stores_the_whole_answer(client, server):
    with client.stream("POST", "/v1/chat/completions", json={"messages": [QUESTION], "stream": True,
                                                              "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    ids = {chunk["id"] for chunk in chunks}
    assert len(ids) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"]["content"] or "" for c in chunks if c["choices"])
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12
    assert len(chunks) > 3  # it really streamed, token by token
    assert stored(server, ids.pop())["content"] == text


def test_streaming_and_non_streaming_agree_greedily(client):
    plain = chat(client).json()["choices"][0]["message"]["content"]
    with client.stream("POST", "/v1/chat/completions", json={"messages": [QUESTION], "stream": True}) as response:
        events = read_events(response)
    streamed = "".join(c["choices"][0]["delta"]["content"] or "" for c in events[:-1] if c["choices"])
    assert streamed == plain


def test_openai_client_parses_both_shapes(server, keys):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key=keys["alice"], max_retries=0)
    completion = client.chat.completions.create(model="tiny-llama", messages=[QUESTION], max_tokens=5)
    assert completion.id.startswith("msg-") and completion.usage.completion_tokens == 5
    stream = client.chat.completions.create(model="tiny-llama", messages=[QUESTION], max_tokens=5, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert "".join(pieces) == stored(server, completion.id)["content"]  # greedy: same answer both ways


def test_conversation_grouping_by_metadata(client, server, keys):
    first = chat(client, key=keys["alice"]).json()
    conversation = first["conversation_id"]
    follow_up = chat(
        client, QUESTION, {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
        {"role": "user", "content": "and for a child?"},
        key=keys["alice"], metadata={"conversation_id": conversation},
    ).json()
    assert follow_up["conversation_id"] == conversation
    roles = [r["role"] for r in server.store.read(
        "SELECT role FROM messages WHERE conversation_id = ? ORDER BY created_at", [conversation])]
    assert roles == ["user", "assistant", "user", "assistant"]
    # without metadata every chat starts a new conversation
    assert chat(client, key=keys["alice"]).json()["conversation_id"] != conversation


def test_client_chosen_conversation_id_and_foreign_conversations(client, server, keys):
    assert chat(client, key=keys["alice"], metadata={"conversation_id": "visit-42"}).json()["conversation_id"] == "visit-42"
    response = chat(client, key=keys["mallory"], metadata={"conversation_id": "visit-42"})
    assert response.status_code == 404
    assert "visit-42" in response.json()["error"]["message"]
    owners = server.store.read("SELECT DISTINCT user_id FROM conversations WHERE id = 'visit-42'")
    assert owners == [{"user_id": "alice"}]


def test_regeneration_is_stored_as_a_sibling(client, server, keys):
    first = chat(client, key=keys["bob"]).json()
    again = chat(client, key=keys["bob"], metadata={"regenerate": first["id"]}, temperature=1.0, seed=7).json()
    original, sibling = stored(server, first["id"]), stored(server, again["id"])
    assert again["id"] != first["id"]
    assert sibling["parent_id"] == original["parent_id"]
    assert sibling["conversation_id"] == original["conversation_id"]
    users = server.store.read("SELECT count(*) AS n FROM messages WHERE conversation_id = ? AND role = 'user'",
                              [original["conversation_id"]])
    assert users == [{"n": 1}]  # regenerating stores no second question
    assert chat(client, key=keys["eve"], metadata={"regenerate": first["id"]}).status_code == 404


def test_feedback_is_stored_and_a_second_vote_replaces_the_first(client, server, keys):
    answer_id = chat(client, key=keys["carol"]).json()["id"]
    first = client.post("/api/feedback", json={"message_id": answer_id, "rating": "up"},
                        headers=bearer(keys["carol"]))
    assert first.status_code == 200 and first.json() == {"message_id": answer_id, "rating": "up", "replaced": False}
    second = client.post("/api/feedback", headers=bearer(keys["carol"]), json={
        "message_id": answer_id, "rating": "down", "reason": "unsafe or harmful", "comment": "suggested a double dose"})
    assert second.json()["replaced"] is True
    # someone else's answer is unknown to dave (votes are training labels)
    assert client.post("/api/feedback", json={"message_id": answer_id, "rating": "up"},
                       headers=bearer(keys["dave"])).status_code == 404
    current = server.store.read(
        "SELECT user_id, rating, reason, comment FROM current_feedback WHERE message_id = ? ORDER BY user_id", [answer_id])
    assert current == [
        {"user_id": "carol", "rating": "down", "reason": "unsafe or harmful", "comment": "suggested a double dose"},
    ]
    history = server.store.read("SELECT rating FROM feedback WHERE message_id = ? AND user_id = 'carol' ORDER BY seq",
                                [answer_id])
    assert [h["rating"] for h in history] == ["up", "down"]


def test_concurrent_chats_do_not_corrupt_each_other(client, server, keys):
    questions = [f"question {i}: the patient has pain after {i} days" for i in range(6)]

    def ask(text):
        return chat(client, {"role": "user", "content": text}, key=keys[f"user{len(text) % 3}"]).json()

    sequential = [ask(q)["choices"][0]["message"]["content"] for q in questions]
    with ThreadPoolExecutor(max_workers=6) as pool:
        parallel = list(pool.map(ask, questions))
    assert [p["choices"][0]["message"]["content"] for p in parallel] == sequential  # greedy: same text
    for question, response in zip(questions, parallel):
        answer = stored(server, response["id"])
        assert stored(server, answer["parent_id"])["content"] == question


def test_healthz_and_models(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["engine"]["model"] == "tiny-llama" and health["schema_version"] >= 1
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny-llama"


def test_record_survives_a_restart(settings, tiny_engine):
    from tests.conftest import start_server
    import httpx

    with start_server(settings, tiny_engine) as live:
        answer_id = httpx.post(live.url + "/v1/chat/completions", json={"messages": [QUESTION]}, timeout=60).json()["id"]
        httpx.post(live.url + "/api/feedback", json={"message_id": answer_id, "rating": "down"}, timeout=60)
    with start_server(settings, tiny_engine) as live:
        assert live.store.read("SELECT rating FROM current_feedback WHERE message_id = ?", [answer_id]) == [{"rating": "down"}]
        assert live.store.read("SELECT count(*) AS n FROM messages")[0]["n"] == 2


def test_metrics_count_requests_by_route_without_ids(client):
    answer = chat(client).json()["id"]
    client.post("/api/feedback", json={"message_id": answer, "rating": "up"})
    client.post("/api/feedback", json={"message_id": "msg-unknown", "rating": "up"})
    text = client.get("/metrics").text
    assert 'carecycle_http_requests_total{method="POST",route="/v1/chat/completions",status="200"} 1.0' in text
    assert 'carecycle_http_requests_total{method="POST",route="/api/feedback",status="404"} 1.0' in text
    assert 'carecycle_active_adapter_info{version="base"} 1.0' in text
    assert "msg-" not in text  # no ids (or text) leave through /metrics
