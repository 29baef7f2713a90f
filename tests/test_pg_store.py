"""The record on PostgreSQL: the same schema as on DuckDB, the same named queries, writes that
several stores serialise, one-line errors. A real server (tests/postgres_server.py)."""

from __future__ import annotations

import asyncio
import threading

import psycopg
import pytest

from feedback.accounts import Accounts
from feedback.audit import audit, audit_rows
from feedback.chat_record import Answer, ChatRecord
from feedback.errors import NotFoundError, StoreError
from feedback.judgment_record import JudgmentRecord, JudgmentRow
from feedback.pg_store import PgStore, pg_query
from feedback.registry_record import RegistryRecord
from feedback.retention import forget_conversation
from feedback.review_record import ReviewRecord
from feedback.store import Store, migration_files

pytestmark = pytest.mark.postgres

# DuckDB's names for the types that PostgreSQL spells otherwise
_DUCKDB_TYPE_NAMES = {"varchar": "text", "double": "double precision"}
_COLUMNS = (
    "SELECT c.table_name, c.column_name, c.ordinal_position, lower(c.data_type) AS data_type, c.is_nullable, t.table_type"
    " FROM information_schema.columns c JOIN information_schema.tables t"
    " ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
    " WHERE c.table_schema = ? ORDER BY c.table_name, c.ordinal_position"
)


def _schema(store, schema: str) -> list[tuple]:
    return [(r["table_name"], r["column_name"], r["ordinal_position"], _DUCKDB_TYPE_NAMES.get(r["data_type"], r["data_type"]),
             r["is_nullable"], r["table_type"]) for r in store.read(_COLUMNS, [schema])]


@pytest.fixture(params=["duckdb", "postgresql"])
def any_store(request, tmp_path):
    if request.param == "duckdb":
        store = Store(tmp_path / "rec.duckdb")
    else:
        store = PgStore(request.getfixturevalue("postgres_url"))
    with store:
        yield store


def test_both_dialects_make_the_same_tables_columns_and_views(tmp_path, postgres_url):
    assert [v for v, _, _ in migration_files("postgresql")] == [v for v, _, _ in migration_files()]
    with Store(tmp_path / "rec.duckdb") as duck, PgStore(postgres_url) as pg:
        duck_schema, pg_schema = _schema(duck, "main"), _schema(pg, "public")
        assert duck.schema_version() == pg.schema_version() == migration_files()[-1][0]
    assert pg_schema == duck_schema
    views = {row[0] for row in pg_schema if row[5] == "VIEW"}
    assert views == {"current_feedback", "latest_judgments", "latest_reviews"}
    assert ("latest_judgments", "abstained", 13, "boolean", "YES", "VIEW") in pg_schema  # 004 reached the view


def test_the_chat_and_judgment_queries_run_on_both_backends(any_store):
    chats, judgments = ChatRecord(any_store), JudgmentRecord(any_store)

    async def one_exchange() -> str:
        turn = await chats.start_turn("u1", None, "Is 100% of the dose safe?")
        answer = Answer("Ask your pharmacist.", "complete", "m", "v1", 5, 4, 12.5,
                        prompt=[{"role": "user", "content": "Is 100% of the dose safe?"}])
        message_id = await chats.add_answer(turn, answer)
        await chats.vote("u1", message_id, "down", None, None)
        assert (await chats.vote("u1", message_id, "up", "helpful", None))["replaced"] is True
        for label in ("Caution", "Accept"):
            await judgments.add(JudgmentRow(message_id, "self", "1", label, 1, 0.9, 1.0, False, False, "{}"))
        return message_id

    message_id = asyncio.run(one_exchange())
    conversation = chats.conversation(chats.conversations_of("u1")[0]["id"], "u1")
    assert [(m["role"], m["content"]) for m in conversation] == [
        ("user", "Is 100% of the dose safe?"), ("assistant", "Ask your pharmacist.")]
    assert any_store.read("SELECT rating, reason FROM current_feedback WHERE message_id = ?", [message_id]) == [
        {"rating": "up", "reason": "helpful"}]
    assert [r["label"] for r in judgments.latest(message_id)] == ["Accept"]
    assert any_store.read_one("SELECT messages FROM prompts")[0] == '[{"content":"Is 100% of the dose safe?","role":"user"}]'
    with pytest.raises(NotFoundError):  # someone else's answer stays unknown
        asyncio.run(chats.vote("u2", message_id, "up", None, None))


def test_accounts_adapters_verdicts_and_forget_run_on_both_backends(any_store):
    """The named queries that already run unchanged on PostgreSQL. Still DuckDB-only (issue 15):
    cycle step and outcome figures (json_object, json_merge_patch), a candidate's rejection,
    signal_since_last_cycle (json_exists), the review queue (arg_max) and purge_expired (to_days)."""
    asyncio.run(ChatRecord(any_store).start_turn("u1", "conv-1", "question"))
    answer_id = any_store.read_one("SELECT id FROM messages")[0]
    any_store.write(lambda conn: conn.execute(
        "INSERT INTO messages (id, conversation_id, parent_id, role, content) VALUES ('a1', 'conv-1', ?, 'assistant', 'x')", [answer_id]))
    accounts, registry, reviews = Accounts(any_store), RegistryRecord(any_store), ReviewRecord(any_store)

    accounts.create("cli", "op1", "operator", "a-long-password-123")
    assert accounts.by_password("op1", "a-long-password-123").role == "operator"
    registry.register("v1", None, "kto", "/adapters/v1", "sum", "base", "snap", ["a1"])
    assert registry.make_active("cli", "v1", "promote") == {"active": "v1", "previous": None, "retired": []}
    assert registry.adapter("v1")["status"] == "active"
    reviews.open_item("op1", "a1")
    reviews.add_verdict("op1", "a1", {"label": "Refuse", "harm_level": 3, "verdict": "undesirable",
                                      "corrected_answer": "No.", "judge_correct": None}, None)
    assert any_store.read("SELECT label, corrected_answer FROM latest_reviews") == [{"label": "Refuse", "corrected_answer": "No."}]

    report = forget_conversation(any_store, "cli", "conv-1")
    assert (report.conversations, report.messages, report.adapters_trained_on_them) == (1, 2, ["v1"])
    assert any_store.read_one("SELECT count(*) FROM messages")[0] == 0
    assert [r["action"] for r in audit_rows(any_store)][0] == "conversation.forget"


def test_failed_write_rolls_back_and_reaches_the_caller(any_store):
    def half_then_fail(conn):
        audit(conn, "cli", "half", None)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        any_store.write(half_then_fail)
    any_store.write(lambda conn: audit(conn, "cli", "whole", "t", n=1))
    assert [(r["action"], r["target"]) for r in audit_rows(any_store)] == [("whole", "t")]


def test_two_stores_writing_at_once_are_serialised(postgres_url):
    """Each write reads the count and inserts the next id: without serialisable transactions two
    replicas would pick the same id. Every acknowledged write is there, each id once."""
    def next_conversation(conn):
        n = conn.execute("SELECT count(*) FROM conversations").fetchone()[0]
        conn.execute("INSERT INTO conversations (id, user_id) VALUES (?, 'u')", [f"c{n:04d}"])

    with PgStore(postgres_url, max_attempts=50) as first, PgStore(postgres_url, max_attempts=50) as second:
        def client(store):
            for _ in range(15):
                store.write(next_conversation)

        threads = [threading.Thread(target=client, args=(store,)) for store in (first, second, first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ids = [r["id"] for r in second.read("SELECT id FROM conversations ORDER BY id")]
    assert ids == [f"c{n:04d}" for n in range(60)]


def test_connections_the_server_dropped_are_replaced(postgres_url):
    with PgStore(postgres_url, pool_size=2) as store:
        store.write(lambda conn: audit(conn, "cli", "before", None))
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            dropped = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                                    " WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]
        assert dropped >= 1
        store.write(lambda conn: audit(conn, "cli", "after", None))
        assert [r["action"] for r in audit_rows(store)] == ["after", "before"]


def test_a_record_newer_than_the_code_is_refused(postgres_url):
    PgStore(postgres_url).open().close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (999, '999_future.sql')")
    with pytest.raises(StoreError, match="schema version 999, newer than this carecycle"):
        PgStore(postgres_url).open()


def test_an_unreachable_server_is_named_in_one_line(postgres_server):
    url = "postgresql://carecycle:secret@127.0.0.1:1/record"
    with pytest.raises(StoreError) as caught:
        PgStore(url, connect_timeout_s=2).open()
    message = str(caught.value)
    assert "\n" not in message and "secret" not in message
    assert message.startswith("cannot reach the PostgreSQL record at carecycle@127.0.0.1:1/record: ")
    assert "Check that the server runs" in message


def test_placeholders_become_psycopg_ones_outside_quotes(postgres_url):
    assert pg_query("SELECT '?', \"a?\" FROM t WHERE x LIKE '5%' AND y = ? AND z = 10 % 3", [1]) == (
        "SELECT '?', \"a?\" FROM t WHERE x LIKE '5%%' AND y = %s AND z = 10 %% 3", [1])
    assert pg_query("SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM t WHERE id = $1 AND k = $12 AND s = '$2')", ["a"] * 12) == (
        "SELECT %(p1)s WHERE NOT EXISTS (SELECT 1 FROM t WHERE id = %(p1)s AND k = %(p12)s AND s = '$2')",
        {f"p{n}": "a" for n in range(1, 13)})
    with PgStore(postgres_url) as store:  # and the server agrees, with and without parameters
        assert store.read_one("SELECT '5%', 10 % 3") == ("5%", 1)
        assert store.read_one("SELECT $1 || $2 || $1 || '?'", ["a", "b"]) == ("aba?",)
        assert store.read_one("SELECT ? || '?' || ?", ["a", "b"]) == ("a?b",)
