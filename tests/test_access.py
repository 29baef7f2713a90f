"""Roles, the review queue, verdicts, the audit trail, retention and forget, abuse limits."""

import time

import httpx
import pytest

from serve.cares import safety_score
from tests.test_chat_api import QUESTION, bearer, chat

pytestmark = pytest.mark.both_backends  # tests/conftest.py: DuckDB, then PostgreSQL

# every route, who may use it — anonymous (no credentials), user, operator, admin — and the status
# an allowed caller gets for the matrix's request (unknown ids, an empty JSON body): the handler ran
ANY, USER, OPERATOR, ADMIN = "anonymous", "user", "operator", "admin"
ROUTES = {
    ("POST", "/v1/chat/completions"): (ANY, 422),
    ("GET", "/v1/models"): (ANY, 200),
    ("POST", "/api/feedback"): (ANY, 422),
    ("GET", "/api/conversations"): (USER, 200),
    ("GET", "/api/conversations/{conversation_id}"): (USER, 404),
    ("GET", "/healthz"): (ANY, 200),
    ("GET", "/metrics"): (ANY, 200),
    ("GET", "/api/review/queue"): (OPERATOR, 200),
    ("GET", "/api/review/items/{message_id}"): (OPERATOR, 404),
    ("POST", "/api/review/items/{message_id}/verdict"): (OPERATOR, 422),
    ("GET", "/api/admin/users"): (ADMIN, 200),
    ("POST", "/api/admin/users"): (ADMIN, 422),
    ("PUT", "/api/admin/users/{user_id}/role"): (ADMIN, 422),
    ("POST", "/api/admin/users/{user_id}/disable"): (ADMIN, 404),
    ("GET", "/api/admin/audit"): (ADMIN, 200),
    ("DELETE", "/api/admin/conversations/{conversation_id}"): (ADMIN, 404),
    ("GET", "/api/admin/cycles"): (ADMIN, 200),
    ("POST", "/api/admin/cycles"): (ADMIN, 202),
    ("GET", "/api/admin/cycles/{cycle_id}"): (ADMIN, 404),
    ("GET", "/api/admin/cycle-requests/{request_id}"): (ADMIN, 404),
    ("POST", "/api/admin/cycles/{cycle_id}/decision"): (ADMIN, 422),
    ("GET", "/api/admin/adapters"): (ADMIN, 200),
    ("POST", "/api/admin/adapters/{version}/promote"): (ADMIN, 404),
    ("POST", "/api/admin/adapters/rollback"): (ADMIN, 409),  # nothing to roll back to
}
RANK = {ANY: 0, USER: 1, OPERATOR: 2, ADMIN: 3}


def api_routes(app):
    documented = {(method.upper(), path) for path, operations in app.openapi()["paths"].items() for method in operations}
    return documented | {("GET", "/metrics")}  # Prometheus' endpoint stays out of the OpenAPI schema


def test_every_route_is_in_the_role_matrix(server):
    assert api_routes(server.app) == set(ROUTES), "a route was added or removed: put it in ROUTES with its role"


@pytest.mark.parametrize("caller", [ANY, USER, OPERATOR, ADMIN])
def test_role_matrix(client, server, keys, caller):
    headers = {ANY: {}, USER: bearer(keys["alice"]), OPERATOR: bearer(keys["olga"]), ADMIN: bearer(keys["ada"])}[caller]
    for (method, path), (needed, status) in ROUTES.items():
        if (method, path) == ("POST", "/api/admin/cycles"):
            continue  # starting a real cycle is tested in test_cycle.py; its role is checked below
        url = path.format(conversation_id="conv-x", message_id="msg-x", user_id="nobody", cycle_id="cyc-x",
                          version="v-x", request_id="req-x")
        response = client.request(method, url, headers=headers, json={})
        allowed = RANK[caller] >= RANK[needed]
        if allowed:
            assert response.status_code == status, (method, path, caller, response.text)
        else:
            expected = 401 if caller == ANY else 403
            assert response.status_code == expected, (method, path, caller, response.status_code)
            assert response.json()["error"]["code"] == expected


def test_only_admins_trigger_cycles(client, keys):
    assert client.post("/api/admin/cycles").status_code == 401
    for name in ("alice", "olga"):
        assert client.post("/api/admin/cycles", headers=bearer(keys[name])).status_code == 403


def test_a_bad_key_is_401_not_anonymous(client):
    response = chat(client, key="cc_not-a-real-key")
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"


def test_chat_requires_sign_in_when_anonymous_chat_is_off(settings, tiny_engine):
    from tests.conftest import start_server

    with start_server(settings.model_copy(update={"anonymous_chat": False}), tiny_engine) as live:
        response = httpx.post(live.url + "/v1/chat/completions", json={"messages": [QUESTION]})
        assert response.status_code == 401 and live.store.read("SELECT * FROM messages") == []


def test_users_read_only_their_own_conversations(client, keys):
    mine = chat(client, key=keys["alice"]).json()["conversation_id"]
    chat(client, key=keys["bob"])
    listed = client.get("/api/conversations", headers=bearer(keys["alice"])).json()["data"]
    assert [c["id"] for c in listed] == [mine] and listed[0]["messages"] == 2
    assert client.get(f"/api/conversations/{mine}", headers=bearer(keys["alice"])).status_code == 200
    assert client.get(f"/api/conversations/{mine}", headers=bearer(keys["bob"])).status_code == 404


def seed_review_record(server, client, keys):
    """Four answers with different risks; returns their ids by name."""
    ids = {name: chat(client, {"role": "user", "content": f"question {name}"}, key=keys["alice"]).json()["id"]
           for name in ("calm", "refused", "downvoted", "unsafe_h2", "unsafe_h3")}
    judgments = {"refused": ("Refuse", 0, False, True), "unsafe_h2": ("Accept", 2, True, False),
                 "unsafe_h3": ("Accept", 3, True, False), "calm": ("Caution", 1, False, False),
                 "downvoted": ("Accept", 0, False, False)}
    for name, (label, harm, unsafe, refusal) in judgments.items():
        server.store.write(lambda c, n=name, l=label, h=harm, u=unsafe, r=refusal: c.execute(
            "INSERT INTO judgments (id, message_id, judge, judge_version, label, harm_level, unsafe_compliance,"
            " over_refusal, score) VALUES (?, ?, 'finetuned', 'v1', ?, ?, ?, ?, ?)",
            [f"j-{n}", ids[n], l, h, u, r, safety_score(h, l)]))
    client.post("/api/feedback", json={"message_id": ids["downvoted"], "rating": "down"}, headers=bearer(keys["alice"]))
    return ids


def test_queue_is_riskiest_first(client, server, keys):
    ids = seed_review_record(server, client, keys)
    queue = client.get("/api/review/queue", headers=bearer(keys["olga"])).json()["data"]
    flagged = [item["message_id"] for item in queue if item["reason"] != "calibration"]
    assert flagged == [ids["unsafe_h3"], ids["unsafe_h2"], ids["refused"], ids["downvoted"]]
    assert [item["reason"] for item in queue[:4]] == ["unsafe_compliance", "unsafe_compliance", "over_refusal", "thumbs_down"]


def test_calibration_sample_takes_unflagged_answers(client, server, keys):
    seed_review_record(server, client, keys)
    everything = server.services.store.read("SELECT count(*) AS n FROM messages WHERE role = 'assistant'")[0]["n"]
    from feedback.review_record import ReviewRecord

    assert len(ReviewRecord(server.store).queue(calibration_percent=100)) == everything
    assert {i["reason"] for i in ReviewRecord(server.store).queue(calibration_percent=0)} == {
        "unsafe_compliance", "over_refusal", "thumbs_down"}


def test_verdict_flow_with_audit_and_no_silent_overwrite(client, server, keys):
    ids = seed_review_record(server, client, keys)
    olga, ada = bearer(keys["olga"]), bearer(keys["ada"])
    item = client.get(f"/api/review/items/{ids['unsafe_h3']}", headers=olga).json()
    assert [m["role"] for m in item["transcript"]] == ["user", "assistant"]
    assert item["judgments"][0]["label"] == "Accept" and item["reviews"] == []
    verdict = {"label": "Accept", "harm_level": 3, "judge_correct": True,
               "corrected_answer": "I can't help with that. If you are in danger, call emergency services."}
    first = client.post(f"/api/review/items/{ids['unsafe_h3']}/verdict", headers=olga, json=verdict)
    assert first.status_code == 200 and first.json()["next_message_id"] == ids["unsafe_h2"]
    # a second operator who opened the item before that verdict is told, not silently overwriting it
    stale = client.post(f"/api/review/items/{ids['unsafe_h3']}/verdict", headers=ada,
                        json={**verdict, "label": "Caution"})
    assert stale.status_code == 409 and "olga reviewed this answer" in stale.json()["error"]["message"]
    informed = client.post(f"/api/review/items/{ids['unsafe_h3']}/verdict", headers=ada,
                           json={**verdict, "label": "Caution", "seen_review_id": first.json()["review_id"]})
    assert informed.status_code == 200
    reviews = server.store.read("SELECT operator_id, label, verdict FROM reviews ORDER BY created_at")
    assert reviews == [{"operator_id": "olga", "label": "Accept", "verdict": "undesirable"},
                       {"operator_id": "ada", "label": "Caution", "verdict": "undesirable"}]
    assert server.store.read("SELECT operator_id FROM latest_reviews") == [{"operator_id": "ada"}]
    audit = client.get("/api/admin/audit", headers=ada).json()["data"]
    actions = [(row["actor"], row["action"]) for row in reversed(audit)]
    assert ("olga", "transcript.read") in actions
    assert actions.count(("olga", "review.verdict")) == 1 and actions.count(("ada", "review.verdict")) == 1
    assert client.get("/api/review/queue", headers=olga).json()["data"][0]["message_id"] == ids["unsafe_h2"]


@pytest.mark.parametrize("body, words", [
    ({"label": "Maybe", "harm_level": 1}, ["label"]),
    ({"label": "Accept", "harm_level": 4}, ["harm_level"]),
    ({"label": "Accept", "harm_level": 1, "surprise": True}, ["surprise"]),
])
def test_bad_verdicts_are_422(client, server, keys, body, words):
    answer = chat(client, key=keys["alice"]).json()["id"]
    response = client.post(f"/api/review/items/{answer}/verdict", headers=bearer(keys["olga"]), json=body)
    assert response.status_code == 422 and all(w in response.json()["error"]["message"] for w in words)
    assert client.post("/api/review/items/msg-nope/verdict", headers=bearer(keys["olga"]),
                       json={"label": "Accept", "harm_level": 0}).status_code == 404


def test_admin_manages_users_and_roles_with_audit(client, keys):
    ada = bearer(keys["ada"])
    created = client.post("/api/admin/users", headers=ada, json={"id": "nurse-jo", "role": "operator"})
    assert created.status_code == 201 and created.json()["api_key"].startswith("cc_")
    new_key = created.json()["api_key"]
    assert client.get("/api/review/queue", headers=bearer(new_key)).status_code == 200
    assert client.put("/api/admin/users/nurse-jo/role", headers=ada, json={"role": "user"}).status_code == 200
    assert client.get("/api/review/queue", headers=bearer(new_key)).status_code == 403
    assert client.post("/api/admin/users", headers=ada, json={"id": "nurse-jo", "role": "user"}).status_code == 409
    assert client.post("/api/admin/users", headers=ada, json={"id": "x", "role": "user", "password": "short"}).status_code == 422
    actions = {(r["action"], r["target"]) for r in client.get("/api/admin/audit", headers=ada).json()["data"]}
    assert {("user.create", "nurse-jo"), ("user.role", "nurse-jo")} <= actions


def test_a_revoked_key_stops_working_on_the_next_request_though_it_was_cached(client, server, keys):
    alice, ada = bearer(keys["alice"]), bearer(keys["ada"])
    assert client.get("/api/conversations", headers=alice).status_code == 200  # alice's key is now cached
    server.store.write(lambda c: c.execute("UPDATE users SET disabled = true WHERE id = 'alice'"))
    # a change behind the accounts' back (as another replica's) is not seen while the entry lives:
    assert client.get("/api/conversations", headers=alice).status_code == 200
    server.store.write(lambda c: c.execute("UPDATE users SET disabled = false WHERE id = 'alice'"))
    assert client.post("/api/admin/users/alice/disable", headers=ada).json() == {"id": "alice", "disabled": True}
    response = client.get("/api/conversations", headers=alice)
    assert response.status_code == 401 and "unknown or disabled API key" in response.json()["error"]["message"]
    assert chat(client, key=keys["alice"]).status_code == 401
    revoked = server.store.read("SELECT actor, target FROM audit_log WHERE action = 'user.disable'")
    assert revoked == [{"actor": "ada", "target": "alice"}]


def test_a_cached_key_expires_so_changes_made_elsewhere_are_seen(server, keys):
    from feedback.accounts import Accounts

    accounts = Accounts(server.store, key_cache_s=0.2)
    assert accounts.by_api_key(keys["olga"]).role == "operator"
    server.store.write(lambda c: c.execute("UPDATE users SET role = 'user' WHERE id = 'olga'"))
    assert accounts.cached_api_key(keys["olga"]).role == "operator"  # cached: no read of the record
    time.sleep(0.3)
    assert accounts.cached_api_key(keys["olga"]) is None
    assert accounts.by_api_key(keys["olga"]).role == "user"


def test_forget_a_conversation_reports_adapters_trained_on_it(client, server, keys):
    answer = chat(client, key=keys["alice"]).json()
    client.post("/api/feedback", json={"message_id": answer["id"], "rating": "up"}, headers=bearer(keys["alice"]))
    server.store.write(lambda c: c.execute("INSERT INTO adapter_provenance VALUES ('adapter-7', ?)", [answer["id"]]))
    keep = chat(client, key=keys["bob"]).json()["conversation_id"]
    response = client.delete(f"/api/admin/conversations/{answer['conversation_id']}", headers=bearer(keys["ada"]))
    assert response.json() == {"conversations": 1, "messages": 2, "adapters_trained_on_them": ["adapter-7"]}
    assert server.store.read("SELECT DISTINCT conversation_id FROM messages") == [{"conversation_id": keep}]
    assert server.store.read("SELECT count(*) AS n FROM feedback") == [{"n": 0}]
    assert client.delete(f"/api/admin/conversations/{answer['conversation_id']}", headers=bearer(keys["ada"])).status_code == 404
    forget = server.store.read("SELECT actor, detail FROM audit_log WHERE action = 'conversation.forget'")
    assert forget[0]["actor"] == "ada" and "adapter-7" in forget[0]["detail"]


def test_retention_purges_old_conversations_only(client, server, keys):
    from feedback.retention import purge_expired

    old = chat(client, key=keys["alice"]).json()["conversation_id"]
    new = chat(client, key=keys["alice"]).json()["conversation_id"]
    server.store.write(lambda c: c.execute(
        "UPDATE messages SET created_at = created_at - INTERVAL '40 days' WHERE conversation_id = ?", [old]))
    server.store.write(lambda c: c.execute(
        "UPDATE conversations SET created_at = created_at - INTERVAL '40 days' WHERE id = ?", [old]))
    report = purge_expired(server.store, "system:retention", 30)
    assert (report.conversations, report.messages) == (1, 2)
    assert server.store.read("SELECT id FROM conversations") == [{"id": new}]


def test_feedback_flood_is_limited_without_affecting_others(settings, tiny_engine):
    from feedback.accounts import Accounts
    from tests.conftest import start_server

    with start_server(settings.model_copy(update={"rate_limit_feedback": 5}), tiny_engine) as live:
        accounts = Accounts(live.store)
        flooder, other = accounts.create("t", "flooder", "user"), accounts.create("t", "other", "user")
        with httpx.Client(base_url=live.url, timeout=60) as http:
            answer = chat(http, key=flooder).json()["id"]
            codes = [http.post("/api/feedback", headers=bearer(flooder),
                               json={"message_id": answer, "rating": "up"}).status_code for _ in range(12)]
            assert codes[:5] == [200] * 5 and set(codes[5:]) == {429}
            limited = http.post("/api/feedback", headers=bearer(flooder), json={"message_id": answer, "rating": "up"})
            assert int(limited.headers["retry-after"]) >= 1 and "at most 5 a minute" in limited.json()["error"]["message"]
            own = chat(http, key=other).json()["id"]
            assert http.post("/api/feedback", headers=bearer(other), json={"message_id": own, "rating": "down"}).status_code == 200
        assert live.store.read("SELECT count(*) AS n FROM feedback WHERE user_id = 'flooder'") == [{"n": 5}]


def test_oversized_bodies_are_413(client):
    response = client.post("/v1/chat/completions", content=b"{" + b" " * 300_000 + b"}",
                           headers={"content-type": "application/json"})
    assert response.status_code == 413 and "CARECYCLE_MAX_REQUEST_BYTES" in response.json()["error"]["message"]


def test_no_route_takes_a_file_path_or_adapter_from_users(server):
    schemas = server.app.openapi()["components"]["schemas"]
    fields = {name for schema in schemas.values() for name in schema.get("properties", {})}
    assert not fields & {"path", "adapter", "adapter_path", "lora_path", "file", "filename"}


# the Gradio pages: who gets a session (operators and admins sign in with a password), and what
# each page's API lets them do; FIRST is an event each page runs on load
FIRST = {"/review": "/load_next", "/cycles": "/refresh"}
ACTING = ("/on_trigger", "/on_rollback")  # the dashboard's buttons: admins only
PASSWORDS = {USER: ("pat", "a user password!"), OPERATOR: ("olga", "an operator password"),
             ADMIN: ("ada", "an admin password")}


def gradio_call(http, page, endpoint):
    """Call one event of a mounted Gradio page over its HTTP API: (status, the last SSE event's lines)."""
    started = http.post(f"{page}/gradio_api/call{endpoint}", json={"data": []})
    if started.status_code != 200:
        return started.status_code, None
    events = http.get(f"{page}/gradio_api/call{endpoint}/{started.json()['event_id']}").text
    return 200, events.strip().splitlines()[-2:]


@pytest.fixture
def ui_server(settings, tiny_model_dir):
    from feedback.accounts import Accounts
    from serve.local_engine import LocalEngine
    from tests.conftest import start_server

    engine = LocalEngine(str(tiny_model_dir), model_id="tiny")  # its own: the dashboard rolls an adapter back
    with start_server(settings.model_copy(update={"ui": True}), engine) as live:
        accounts = Accounts(live.store)
        for role, (name, password) in PASSWORDS.items():
            accounts.create("test", name, role, password)
        yield live


def test_gradio_pages_in_the_role_matrix(ui_server, tiny_model_dir, tmp_path):
    from deploy.promotion import promote
    from feedback.registry_record import RegistryRecord
    from tests.test_adapter_integrity import register, trained_adapter

    registry = RegistryRecord(ui_server.store)
    folder = tmp_path / "kto-1"
    register(registry, "kto-1", folder, trained_adapter(tiny_model_dir, folder))
    promote(ui_server.services.engine, registry, "kto-1", "test")  # something an admin could roll back

    for caller in (ANY, USER, OPERATOR, ADMIN):
        for page, first in FIRST.items():
            with httpx.Client(base_url=ui_server.url, timeout=60) as http:
                if caller != ANY:
                    name, password = PASSWORDS[caller]
                    signed_in = http.post(f"{page}/login", data={"username": name, "password": password})
                    assert signed_in.status_code == (400 if caller == USER else 200), (page, caller)
                allowed = caller in (OPERATOR, ADMIN)
                for route in ("/config", "/gradio_api/info"):
                    assert http.get(page + route).status_code == (200 if allowed else 401), (page, route, caller)
                status, final = gradio_call(http, page, first)
                assert (status, final and final[0]) == ((200, "event: complete") if allowed else (401, None))
                if page == "/cycles" and allowed:
                    check_dashboard_actions(http, ui_server, registry, caller)


def check_dashboard_actions(http, server, registry, caller):
    """Operators see the dashboard but change nothing with any of its events (no trigger, no
    rollback; approval is not on the page: its API is admin-only above); admins act."""
    engine = server.services.engine
    endpoints = set(http.get("/cycles/gradio_api/info").json()["named_endpoints"])
    assert set(ACTING) <= endpoints
    said = {endpoint: gradio_call(http, "/cycles", endpoint)[1][1] for endpoint in
            (sorted(endpoints) if caller == OPERATOR else ACTING)}
    if caller == OPERATOR:
        assert [said[endpoint] for endpoint in ACTING] == ['data: ["Only admins can do that."]'] * 2
        assert server.store.read("SELECT * FROM cycles") == []
        assert registry.with_status("active")["version"] == engine.active_adapter == "kto-1"
        assert server.store.read("SELECT actor FROM audit_log WHERE action LIKE 'cycle.%' OR "
                                 "(action LIKE 'adapter.%' AND actor <> 'test')") == []
    else:
        assert all(said[endpoint].startswith('data: ["Done: ') for endpoint in ACTING), said
        assert registry.with_status("active") is None and engine.active_adapter is None
        assert server.store.read("SELECT trigger FROM cycles") == [{"trigger": "ui:ada"}]
