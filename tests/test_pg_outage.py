"""A replica whose PostgreSQL record goes away under it: 503s that say why, and recovery without a
restart. The test stops and starts a cluster of its own (the session's is shared)."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import start_server, wait_for
from tests.postgres_server import server_bin, stoppable_cluster

pytestmark = pytest.mark.postgres

QUESTION = {"role": "user", "content": "the patient has a fever, what dose of paracetamol?"}
PASSWORD = "s3cret-not-for-logs"  # trust auth ignores it; no answer may show it


@pytest.fixture
def cluster():
    bin_dir = server_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries missing: install Debian's `postgresql` package (.ci/run does)")
    with stoppable_cluster(bin_dir) as running:
        yield running


def test_a_replica_answers_503_while_the_record_is_down_and_recovers_by_itself(cluster, settings, tiny_engine):
    url = cluster.url.replace("postgres@", f"postgres:{PASSWORD}@") + "/postgres"
    settings = settings.model_copy(update={"database_url": url})
    with start_server(settings, tiny_engine) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        answer = http.post("/v1/chat/completions", json={"messages": [QUESTION]}).json()["id"]

        def vote(rating: str) -> httpx.Response:
            return http.post("/api/feedback", json={"message_id": answer, "rating": rating})

        assert vote("up").status_code == 200

        cluster.stop()
        refused = vote("down")
        health = http.get("/healthz")
        stream = http.post("/v1/chat/completions", json={"messages": [QUESTION], "stream": True})
        for response in (refused, health, stream):
            assert response.status_code == 503, response.text
            assert int(response.headers["retry-after"]) >= 1
            message = response.json()["error"]["message"]
            assert f"cannot reach the PostgreSQL record at postgres@127.0.0.1:{cluster.port}/postgres" in message
            assert PASSWORD not in response.text
        assert not stream.headers["content-type"].startswith("text/event-stream")  # no stream it could not store

        cluster.start()
        recovered = wait_for(lambda: (response := vote("down")).status_code != 503 and response, timeout=30,
                             what="a vote accepted once the cluster is back")
        assert recovered.json() == {"message_id": answer, "rating": "down", "replaced": True}
        assert http.get("/healthz").json()["status"] == "ok"
        assert live.store.read("SELECT rating FROM current_feedback WHERE message_id = ?", [answer]) == [{"rating": "down"}]
