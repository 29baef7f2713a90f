"""Fuzz the public API from its own OpenAPI schema (schemathesis): no input yields a 5xx."""

import pytest

from tests.test_chat_api import bearer

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
    # nothing the fuzzer sent broke the record either
    assert server.store.schema_version() >= 1
