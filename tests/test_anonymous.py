"""Anonymous callers: the README's OpenAI example as written, one identity per client, and votes
only on one's own answers (votes become training labels)."""

import re

import httpx
import pytest

from tests.conftest import REPO, start_server
from tests.test_chat_api import QUESTION, bearer, chat

pytestmark = pytest.mark.both_backends  # tests/conftest.py: DuckDB, then PostgreSQL

README_URL = "http://127.0.0.1:8000"


def readme_python_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 1, "the README has one Python example; this test runs it"
    return blocks[0]


def test_the_readme_python_example_runs_as_written(server):
    example = readme_python_example()
    assert README_URL in example  # only the port differs from the README's text: the test server's is free
    scope: dict = {}
    exec(compile(example.replace(README_URL, server.url), "README.md", "exec"), scope)
    answer = scope["answer"]
    stored = server.store.read("SELECT m.role, c.id AS conversation, c.user_id FROM messages m"
                               " JOIN conversations c ON c.id = m.conversation_id WHERE m.id = ?", [answer.id])
    assert stored[0]["role"] == "assistant" and stored[0]["conversation"] == "visit-42"
    assert stored[0]["user_id"].startswith("anonymous@token:")
    # the README's next step: vote on it, with the same client's token
    token = re.search(r'api_key="([^"]+)"', example).group(1)
    vote = httpx.post(server.url + "/api/feedback", headers=bearer(token),
                      json={"message_id": answer.id, "rating": "down", "reason": "unsafe or harmful"})
    assert vote.status_code == 200, vote.text


def test_an_unknown_token_is_an_anonymous_client_of_its_own(client, server):
    first, second = chat(client, key="my-app-token").json(), chat(client, key="another-token").json()
    owners = {row["id"]: row["user_id"] for row in server.store.read("SELECT id, user_id FROM conversations")}
    assert owners[first["conversation_id"]].startswith("anonymous@token:")
    assert owners[first["conversation_id"]] != owners[second["conversation_id"]]
    # the same token again is the same client: it continues its conversation
    again = chat(client, key="my-app-token", metadata={"conversation_id": first["conversation_id"]})
    assert again.status_code == 200 and again.json()["conversation_id"] == first["conversation_id"]


def test_an_anonymous_token_is_never_a_signed_in_user(client):
    for path in ("/api/conversations", "/api/review/queue", "/api/admin/users"):
        response = client.get(path, headers=bearer("my-app-token"))
        assert response.status_code == 401, (path, response.text)


@pytest.mark.parametrize("token", ["cc_not-a-real-key", "cc_"])
def test_a_key_looking_token_that_matches_no_key_is_401(client, server, token):
    response = chat(client, key=token)
    assert response.status_code == 401 and "unknown or disabled API key" in response.json()["error"]["message"]
    assert server.store.read("SELECT * FROM messages") == []


def test_a_disabled_key_is_401_not_anonymous(client, server, keys):
    server.store.write(lambda conn: conn.execute("UPDATE users SET disabled = true WHERE id = 'alice'"))
    response = chat(client, key=keys["alice"])
    assert response.status_code == 401 and "unknown or disabled API key" in response.json()["error"]["message"]
    assert server.store.read("SELECT * FROM messages") == []


def test_any_unknown_token_is_401_when_anonymous_chat_is_off(settings, tiny_engine):
    with start_server(settings.model_copy(update={"anonymous_chat": False}), tiny_engine) as live:
        response = httpx.post(live.url + "/v1/chat/completions", json={"messages": [QUESTION]},
                              headers=bearer("unused"), timeout=60)
        assert response.status_code == 401 and live.store.read("SELECT * FROM messages") == []


def test_no_account_can_take_an_anonymous_identity(server):
    from feedback.accounts import Accounts
    from feedback.errors import ConflictError

    with pytest.raises(ConflictError, match="anonymous callers"):
        Accounts(server.store).create("test", "anonymous@token:abc", "admin")


def test_anonymous_b_cannot_continue_regenerate_in_or_vote_on_a(client, server):
    a, b = bearer("client-a-token"), bearer("client-b-token")
    answer = chat(client, key="client-a-token", metadata={"conversation_id": "a-private"}).json()
    before = server.store.read("SELECT count(*) AS n FROM messages")[0]["n"]

    continued = chat(client, key="client-b-token", metadata={"conversation_id": "a-private"})
    regenerated = chat(client, key="client-b-token", metadata={"regenerate": answer["id"]})
    voted = client.post("/api/feedback", headers=b, json={"message_id": answer["id"], "rating": "down"})
    read = client.get("/api/conversations/a-private", headers=b)
    assert [r.status_code for r in (continued, regenerated, voted, read)] == [404, 404, 404, 401]
    assert server.store.read("SELECT count(*) AS n FROM messages")[0]["n"] == before
    assert server.store.read("SELECT * FROM feedback") == []
    # A itself may do each of them
    assert chat(client, key="client-a-token", metadata={"conversation_id": "a-private"}).status_code == 200
    assert chat(client, key="client-a-token", metadata={"regenerate": answer["id"]}).status_code == 200
    assert client.post("/api/feedback", headers=a, json={"message_id": answer["id"], "rating": "up"}).status_code == 200


def test_votes_only_on_answers_of_ones_own_conversations(client, server, keys):
    mine = chat(client, key=keys["alice"]).json()["id"]
    anonymous = chat(client).json()["id"]  # no token at all: the client's address is its identity
    for key, answer in ((keys["bob"], mine), (keys["bob"], anonymous), ("some-token", mine), (None, mine)):
        response = client.post("/api/feedback", headers=bearer(key) if key else {},
                               json={"message_id": answer, "rating": "down"})
        # someone else's answer reads exactly like an unknown id
        unknown = client.post("/api/feedback", headers=bearer(key) if key else {},
                              json={"message_id": "msg-unknown", "rating": "down"})
        assert response.status_code == unknown.status_code == 404
        assert response.json()["error"]["message"].replace(answer, "X") == \
            unknown.json()["error"]["message"].replace("msg-unknown", "X")
    assert server.store.read("SELECT * FROM feedback") == []
    assert client.post("/api/feedback", headers=bearer(keys["alice"]),
                       json={"message_id": mine, "rating": "up"}).status_code == 200
    assert client.post("/api/feedback", json={"message_id": anonymous, "rating": "up"}).status_code == 200
