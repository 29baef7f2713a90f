"""Audit rows commit with their actions: a failing action leaves no audit row, and an audit row
that cannot be written rolls its action back (forget, retention purge, cycle trigger, approval,
export)."""

import json

import httpx
import pytest

from tests.test_adapter_integrity import register, tamper, trained_adapter
from tests.test_chat_api import bearer, chat
from tests.test_cli import run_cli

pytestmark = pytest.mark.both_backends  # tests/conftest.py: DuckDB, then PostgreSQL

_AUDIT_LOG = """CREATE TABLE audit_log (seq BIGINT PRIMARY KEY DEFAULT nextval('audit_seq'), actor TEXT NOT NULL,
    action TEXT NOT NULL CHECK ({check}), target TEXT, detail JSON,
    created_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)"""


def refuse_audit_rows(store, action):
    """A real failure of the audit insert (no mock): the audit_log table gets a CHECK refusing ``action``."""
    check = f"action <> '{action}'" if action else "true"
    store.write(lambda conn: conn.execute(
        "CREATE TEMP TABLE kept_audit AS SELECT * FROM audit_log; DROP TABLE audit_log; "
        + _AUDIT_LOG.format(check=check) + "; INSERT INTO audit_log SELECT * FROM kept_audit; DROP TABLE kept_audit"))


def audit_actions(store, action):
    return store.read("SELECT actor, target FROM audit_log WHERE action = ?", [action])


def snapshot(store):
    return {table: store.read(f"SELECT * FROM {table} ORDER BY 1")
            for table in ("conversations", "messages", "feedback", "cycles", "adapters")}


def test_forget_and_its_audit_row_commit_together(client, server, keys):
    ada = bearer(keys["ada"])
    answer = chat(client, key=keys["alice"]).json()
    client.post("/api/feedback", headers=bearer(keys["alice"]), json={"message_id": answer["id"], "rating": "down"})
    assert client.delete("/api/admin/conversations/conv-unknown", headers=ada).status_code == 404
    assert audit_actions(server.store, "conversation.forget") == []  # a failed forget is not audited

    refuse_audit_rows(server.store, "conversation.forget")
    before = snapshot(server.store)
    assert client.delete(f"/api/admin/conversations/{answer['conversation_id']}", headers=ada).status_code == 500
    assert snapshot(server.store) == before  # the text, the vote, every row still there

    refuse_audit_rows(server.store, None)
    assert client.delete(f"/api/admin/conversations/{answer['conversation_id']}", headers=ada).status_code == 200
    assert audit_actions(server.store, "conversation.forget") == [{"actor": "ada", "target": answer["conversation_id"]}]
    assert server.store.read("SELECT * FROM messages") == []


def test_a_retention_purge_and_its_audit_row_commit_together(client, server, keys):
    from feedback.retention import purge_expired

    old = chat(client, key=keys["alice"]).json()["conversation_id"]
    for table, column in (("messages", "conversation_id"), ("conversations", "id")):
        server.store.write(lambda c, t=table, k=column: c.execute(
            f"UPDATE {t} SET created_at = created_at - INTERVAL '40 days' WHERE {k} = ?", [old]))
    refuse_audit_rows(server.store, "retention.purge")
    before = snapshot(server.store)
    with pytest.raises(Exception, match="(?i)check constraint"):
        purge_expired(server.store, "system:retention", 30)
    assert snapshot(server.store) == before

    refuse_audit_rows(server.store, None)
    assert purge_expired(server.store, "system:retention", 30).conversations == 1
    assert audit_actions(server.store, "retention.purge") == [{"actor": "system:retention", "target": None}]


def test_a_cycle_trigger_and_its_audit_row_commit_together(client, server, keys):
    ada = bearer(keys["ada"])
    cycle = server.services.cycle
    cycle.running = "cyc-already-running"
    assert client.post("/api/admin/cycles", headers=ada).status_code == 409
    assert audit_actions(server.store, "cycle.trigger") == []  # refused: not audited
    cycle.running = None

    refuse_audit_rows(server.store, "cycle.trigger")
    assert client.post("/api/admin/cycles", headers=ada).status_code == 500
    assert server.store.read("SELECT * FROM cycles") == [] and cycle.running is None  # nothing started, none blocked


def awaiting_cycle(store, registry, winner):
    registry.start_cycle("cyc-1", "test")
    registry.record_step("cyc-1", "gate", {"winner": winner, "winner_method": "kto", "compared_with": None})
    store.write(lambda conn: conn.execute("UPDATE cycles SET status = 'awaiting_approval' WHERE id = 'cyc-1'"))


def test_an_approval_and_its_audit_row_commit_together(settings, tiny_model_dir, tmp_path):
    from feedback.accounts import Accounts
    from feedback.registry_record import RegistryRecord
    from serve.local_engine import LocalEngine
    from tests.conftest import start_server

    engine = LocalEngine(str(tiny_model_dir), model_id="tiny")  # its own: the approval loads an adapter into it
    with start_server(settings, engine) as server, httpx.Client(base_url=server.url, timeout=60) as client:
        ada = bearer(Accounts(server.store).create("test", "ada", "admin"))
        registry = RegistryRecord(server.store)
        folder = settings.adapters_dir / "kto-1"
        register(registry, "kto-1", folder, trained_adapter(tiny_model_dir, folder))
        awaiting_cycle(server.store, registry, "kto-1")
        decide = lambda approve: client.post("/api/admin/cycles/cyc-1/decision", headers=ada,  # noqa: E731
                                             json={"approve": approve})
        check_approval(server, registry, decide, folder, tiny_model_dir, tmp_path)


def check_approval(server, registry, decide, folder, tiny_model_dir, tmp_path):

    refuse_audit_rows(server.store, "cycle.approve")
    before = snapshot(server.store)
    assert decide(True).status_code == 500
    assert snapshot(server.store) == before  # still a candidate, the cycle still waits, nothing promoted
    assert audit_actions(server.store, "adapter.promote") == []
    assert server.services.engine.active_adapter is None

    refuse_audit_rows(server.store, None)
    tamper(folder, tiny_model_dir, tmp_path)  # now the promotion itself fails
    assert decide(True).status_code == 409
    assert snapshot(server.store) == before and audit_actions(server.store, "cycle.approve") == []

    assert decide(False).status_code == 200  # a rejection needs no sound adapter
    assert registry.cycle("cyc-1")["status"] == "kept" and registry.adapter("kto-1")["status"] == "rejected"
    assert audit_actions(server.store, "cycle.reject") == [{"actor": "ada", "target": "cyc-1"}]


def test_an_export_and_its_audit_row_commit_together(settings, tmp_path):
    from deploy.record import record_store

    database = {"CARECYCLE_DATABASE_URL": settings.database_url} if settings.database_url else {}
    with record_store(settings) as store:
        store.write(lambda conn: conn.execute(
            "INSERT INTO conversations (id, user_id) VALUES ('c1', 'alice');"
            "INSERT INTO messages (id, conversation_id, role, content) VALUES ('q1', 'c1', 'user', 'is 2 g a day safe?');"
            "INSERT INTO messages (id, conversation_id, parent_id, role, content, status)"
            " VALUES ('a1', 'c1', 'q1', 'assistant', 'Ask your doctor.', 'complete');"
            "INSERT INTO feedback (message_id, user_id, rating) VALUES ('a1', 'alice', 'up')"))
        refuse_audit_rows(store, "dataset.export")
    out = tmp_path / "kto.jsonl"
    export = ("export", "--format", "kto", "--as", "jsonl", "--out", str(out))

    refused = run_cli(*export, data_dir=settings.data_dir, **database)
    assert refused.returncode != 0 and "check constraint" in refused.stderr.lower()
    assert sorted(p.name for p in tmp_path.iterdir() if "kto" in p.name) == []  # no file, not even a partial one

    with record_store(settings) as store:
        refuse_audit_rows(store, None)
    done = run_cli(*export, data_dir=settings.data_dir, **database)
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.is_file() and not (tmp_path / f".{out.name}.unaudited").exists()
    with record_store(settings) as store:
        exported = store.read("SELECT actor, target, detail FROM audit_log WHERE action = 'dataset.export'")
    assert [(row["actor"], row["target"]) for row in exported] == [("cli", str(out))]
    assert json.loads(exported[0]["detail"])["rows"] == len(out.read_text().splitlines())
