"""Fuzz the public API from its own OpenAPI schema (schemathesis): no input yields a 5xx."""

import httpx
import pytest

from tests.test_chat_api import QUESTION, bearer

pytestmark = pytest.mark.fuzz


def operations(app):
    import schemathesis

    schema = schemathesis.openapi.from_dict(app.openapi())
    return [result.ok() for result in schema.get_all_operations()]


@pytest.mark.parametrize("role", ["anonymous", "alice", "olga", "ada"])
def test_no_input_makes_a_server_error(server, keys, role):
    from hypothesis import HealthCheck, Phase, given, settings

    headers = bearer(keys[role]) if role in keys else {}
    failures, statuses = [], []
    for operation in operations(server.app):
        @settings(max_examples=15, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def call(case):
            response = case.call(base_url=server.url, headers=headers, timeout=60)
            statuses.append(response.status_code)
            if response.status_code >= 500:
                failures.append((case.method, case.formatted_path, response.status_code, response.text[:200]))

        call()
    assert failures == []
    assert len(statuses) >= 3 * len(operations(server.app))  # it really sent requests to every route
    # nothing the fuzzer sent broke the record either: it is at the shipped schema, every stored
    # answer still hangs off a question of its own conversation, and a chat is still stored whole
    from feedback.store import migration_files

    assert server.store.schema_version() == migration_files()[-1][0]
    assert server.store.read(
        "SELECT a.id FROM messages a LEFT JOIN messages q ON q.id = a.parent_id AND q.role = 'user'"
        " AND q.conversation_id = a.conversation_id WHERE a.role = 'assistant' AND q.id IS NULL") == []
    answer = httpx.post(server.url + "/v1/chat/completions", headers=headers, json={"messages": [QUESTION]}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert server.store.read("SELECT role FROM messages WHERE id = ?", [answer.json()["id"]]) == [{"role": "assistant"}]
