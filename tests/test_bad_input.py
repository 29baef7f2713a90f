"""Bad input gets a clear error in one shape, and loses nothing already stored."""

import pytest

from tests.sse import read_events
from tests.test_chat_api import QUESTION, chat, stored

pytestmark = pytest.mark.both_backends  # tests/conftest.py: DuckDB, then PostgreSQL


def assert_error(response, status, *words):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == status
    for word in words:
        assert word in error["message"], error["message"]
    return error


def message_count(server):
    return server.store.read("SELECT count(*) AS n FROM messages")[0]["n"]


@pytest.mark.parametrize(
    "payload, words",
    [
        ({"messages": []}, ["messages"]),
        ({"messages": [{"role": "user", "content": "   "}]}, ["messages[0] is empty"]),
        ({"messages": [{"role": "user", "content": "x" * 501}]}, ["501 characters", "at most 500"]),
        ({"messages": [{"role": "doctor", "content": "hi"}]}, ["role"]),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, ["last message must come from the user"]),
        ({"messages": [QUESTION], "max_tokens": 65}, ["max_tokens 65", "limit of 64"]),
        ({"messages": [QUESTION], "max_tokens": 0}, ["max_tokens"]),
        ({"messages": [QUESTION], "temperature": 9}, ["temperature"]),
        ({"messages": [QUESTION], "n": 3}, ["n"]),
        ({"messages": [QUESTION], "metadata": {"conversation_id": "'; DROP TABLE messages; --"}}, ["conversation_id"]),
        ({"messages": "hello"}, ["messages"]),
    ],
)
def test_invalid_chat_requests_are_422_and_store_nothing(client, server, payload, words):
    assert_error(client.post("/v1/chat/completions", json=payload), 422, *words)
    assert message_count(server) == 0


def test_malformed_json_is_422(client):
    response = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(response, 422, "JSON")


@pytest.mark.parametrize(
    "payload, status, words",
    [
        ({"message_id": "msg-doesnotexist", "rating": "up"}, 404, ["unknown message 'msg-doesnotexist'"]),
        ({"message_id": "MSG", "rating": "meh"}, 422, ["rating"]),
        ({"message_id": "MSG", "rating": "up", "comment": "x" * 4001}, 422, ["comment"]),
        ({"message_id": "MSG", "rating": "up", "extra": 1}, 422, ["extra"]),
        ({"rating": "up"}, 422, ["message_id"]),
    ],
)
def test_invalid_feedback(client, server, payload, status, words):
    answer_id = chat(client).json()["id"]
    if payload.get("message_id") == "MSG":
        payload = {**payload, "message_id": answer_id}
    assert_error(client.post("/api/feedback", json=payload), status, *words)
    assert server.store.read("SELECT count(*) AS n FROM feedback")[0]["n"] == 0


def test_feedback_on_a_question_is_refused(client, server):
    question_id = stored(server, chat(client).json()["id"])["parent_id"]
    assert_error(client.post("/api/feedback", json={"message_id": question_id, "rating": "up"}), 404, "id of an answer")


def test_sql_text_is_stored_as_text(client, server):
    hostile = "Robert'); DROP TABLE messages; -- what dose?"
    answer = chat(client, {"role": "user", "content": hostile}).json()
    assert stored(server, stored(server, answer["id"])["parent_id"])["content"] == hostile
    client.post("/api/feedback", json={"message_id": answer["id"], "rating": "down", "comment": hostile})
    assert server.store.read("SELECT comment FROM feedback") == [{"comment": hostile}]


@pytest.fixture
def failing_model(tiny_engine):
    """Make the real model raise on its Nth forward pass, as an out-of-memory crash would."""
    state = {"calls": 0, "fail_at": None}

    def hook(module, args, output):
        state["calls"] += 1
        if state["fail_at"] is not None and state["calls"] >= state["fail_at"]:
            raise RuntimeError("CUDA out of memory (simulated)")

    handle = tiny_engine.model.register_forward_hook(hook)

    def fail_at(n):
        state.update(calls=0, fail_at=n)

    yield fail_at
    handle.remove()


def test_engine_failure_is_503_and_keeps_the_question(client, server, failing_model):
    failing_model(4)
    error = assert_error(chat(client), 503, "out of memory")
    assert error["type"] == "engine_unavailable_error"
    rows = server.store.read("SELECT role, status, error FROM messages ORDER BY role DESC")
    assert rows[0]["role"] == "user"
    assert rows[1]["role"] == "assistant" and rows[1]["status"] == "error" and "out of memory" in rows[1]["error"]
    failing_model(None)
    assert chat(client).status_code == 200  # the server keeps serving


def test_engine_failure_before_the_first_token_is_a_plain_503_when_streaming(client, server, failing_model):
    failing_model(1)
    with client.stream("POST", "/v1/chat/completions", json={"messages": [QUESTION], "stream": True}) as response:
        response.read()
        assert_error(response, 503, "out of memory")
    assert server.store.read("SELECT content FROM messages WHERE role = 'user'") == [{"content": QUESTION["content"]}]


def test_engine_failure_mid_stream_goes_in_band(client, server, failing_model):
    failing_model(5)
    with client.stream("POST", "/v1/chat/completions", json={"messages": [QUESTION], "stream": True}) as response:
        assert response.status_code == 200
        events = read_events(response)
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == 503 and "out of memory" in events[-2]["error"]["message"]
    partial = "".join(e["choices"][0]["delta"]["content"] or "" for e in events[:-2])
    answer = stored(server, events[0]["id"])
    assert answer["status"] == "error" and answer["content"] == partial != ""


def test_unknown_route_and_method(client):
    assert client.get("/v1/nothing").status_code == 404
    assert client.get("/v1/chat/completions").status_code == 405
