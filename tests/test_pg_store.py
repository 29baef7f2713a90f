"""The record on PostgreSQL: the same schema as on DuckDB, the same named queries, writes that
several stores serialise, one-line errors. A real server (tests/postgres_server.py)."""

from __future__ import annotations

import asyncio
import json
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
from feedback.retention import forget_conversation, purge_expired
from feedback.review_record import ReviewRecord
from feedback.store import Store, migration_files
from tests.test_cli import run_cli

pytestmark = [pytest.mark.postgres, pytest.mark.both_backends]  # any_store: tests/conftest.py

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


def test_votes_from_many_threads_through_two_stores_are_all_stored_and_none_refused(postgres_url):
    """Votes only append rows, so they run at READ COMMITTED and cannot lose a serialisation race:
    with one attempt each (max_attempts=1), any such failure would refuse a vote here."""
    voters, votes_each = 16, 8
    with PgStore(postgres_url, max_attempts=1) as first, PgStore(postgres_url, max_attempts=1) as second:
        def answers(conn):
            for i in range(voters):
                conn.execute("INSERT INTO conversations (id, user_id) VALUES (?, ?)", [f"c{i}", f"u{i}"])
                conn.execute("INSERT INTO messages (id, conversation_id, role, content) VALUES (?, ?, 'user', 'q')", [f"q{i}", f"c{i}"])
                conn.execute("INSERT INTO messages (id, conversation_id, parent_id, role, content)"
                             " VALUES (?, ?, ?, 'assistant', 'a')", [f"a{i}", f"c{i}", f"q{i}"])

        first.write(answers)
        replaced: dict[int, list[bool]] = {}

        async def vote_often(i: int) -> None:
            chats = ChatRecord((first, second)[i % 2])
            replaced[i] = [(await chats.vote(f"u{i}", f"a{i}", ("up", "down")[n % 2], None, f"vote {n}"))["replaced"]
                           for n in range(votes_each)]

        threads = [threading.Thread(target=asyncio.run, args=(vote_often(i),)) for i in range(voters)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert replaced == {i: [False] + [True] * (votes_each - 1) for i in range(voters)}  # no thread died refused
        assert second.read_one("SELECT count(*) FROM feedback")[0] == voters * votes_each
        current = first.read("SELECT message_id, user_id, comment FROM current_feedback ORDER BY user_id")
    assert sorted((r["user_id"], r["message_id"], r["comment"]) for r in current) == sorted(
        (f"u{i}", f"a{i}", f"vote {votes_each - 1}") for i in range(voters))


def test_turns_and_answers_from_many_threads_through_two_stores_are_all_stored_and_none_refused(postgres_url):
    """Chat turns and answers run at READ COMMITTED too (keys decide who creates a conversation):
    with one attempt each, any serialisation failure would refuse one here."""
    users, turns_each = 12, 4
    with PgStore(postgres_url, max_attempts=1) as first, PgStore(postgres_url, max_attempts=1) as second:
        async def chat_often(i: int) -> None:
            chats, conversation_id = ChatRecord((first, second)[i % 2]), None
            for n in range(turns_each):
                turn = await chats.start_turn(f"u{i}", conversation_id, f"question {n}")
                conversation_id = turn.conversation_id
                await chats.add_answer(turn, Answer(f"answer {n}", "complete", "m", None, 1, 1, 1.0,
                                                    prompt=[{"role": "user", "content": f"question {n}"}]))

        threads = [threading.Thread(target=asyncio.run, args=(chat_often(i),)) for i in range(users)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        per_user = first.read("SELECT c.user_id, count(DISTINCT c.id) AS conversations, count(m.id) AS messages"
                              " FROM conversations c JOIN messages m ON m.conversation_id = c.id GROUP BY c.user_id")
    assert sorted((r["user_id"], r["conversations"], r["messages"]) for r in per_user) == sorted(
        (f"u{i}", 1, 2 * turns_each) for i in range(users))


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


# (document, key, value) -> the merged document, keys in DuckDB's json_merge_patch order
MERGES = [
    ((None, "train", {"kto": {"step": 1, "loss": 0.5}}), {"train": {"kto": {"step": 1, "loss": 0.5}}}),
    (('{"a":1,"b":{"x":1,"y":2},"c":3}', "b", {"z": 1, "x": None}), {"a": 1, "c": 3, "b": {"y": 2, "z": 1}}),
    (('{"a":1}', "a", None), {}),
    (('{"a":{"x":1}}', "a", [1, {"y": None}]), {"a": [1, {"y": None}]}),
    (('{"a":1}', "r", "because"), {"a": 1, "r": "because"}),
]


def test_json_merged_is_an_rfc_7386_merge_patch_on_both_backends(any_store):
    merged = [any_store.read_one("SELECT json_merged(?, ?, ?)", [doc, key, json.dumps(value)])[0]
              for (doc, key, value), _ in MERGES]
    assert [json.dumps(json.loads(text)) for text in merged] == [json.dumps(expected) for _, expected in MERGES]


def test_the_cycle_record_and_rejections_run_on_both_backends(any_store):
    registry = RegistryRecord(any_store)
    asyncio.run(ChatRecord(any_store).start_turn("u1", "conv-1", "question"))
    question = any_store.read_one("SELECT id FROM messages")[0]
    any_store.write(lambda conn: conn.execute(
        "INSERT INTO messages (id, conversation_id, parent_id, role, content) VALUES ('a1', 'conv-1', ?, 'assistant', 'x')", [question]))
    asyncio.run(ChatRecord(any_store).vote("u1", "a1", "up", None, None))
    assert registry.signal_since_last_cycle() == 1

    registry.start_cycle("cyc-1", "test")
    registry.record_step("cyc-1", "train", {"kto": {"status": "training", "step": 1, "loss": 0.5}})
    registry.record_step("cyc-1", "train", {"kto": {"status": "ok", "loss": None, "rows": 4}})
    registry.finish_cycle("cyc-1", "kept", {"decision": "kept", "winner": None})
    cycle = registry.cycle("cyc-1")
    assert cycle["status"] == "kept" and cycle["finished_at"] is not None
    assert json.dumps(cycle["detail"]) == json.dumps({"train": {"kto": {"step": 1, "status": "ok", "rows": 4}},
                                                      "outcome": {"decision": "kept"}})
    assert registry.signal_since_last_cycle() == 0  # a cycle that trained resets the count

    registry.register("kto-1", None, "kto", "/a/kto-1", "sum", "base", "snap", ["a1"])
    registry.reject("kto-1", "worse than the active one")
    asyncio.run(ChatRecord(any_store).start_turn("u1", "conv-2", "another question"))
    any_store.write(lambda conn: conn.execute(
        "INSERT INTO messages (id, conversation_id, parent_id, role, content) SELECT 'a2', 'conv-2', id, 'assistant', 'y'"
        " FROM messages WHERE conversation_id = 'conv-2'"))
    asyncio.run(ChatRecord(any_store).vote("u1", "a2", "down", None, None))
    registry.start_cycle("cyc-2", "test")
    registry.record_step("cyc-2", "train", {"dpo": {"status": "training", "step": 1, "loss": 1.5}})
    registry.register("dpo-2", None, "dpo", "/a/dpo-2", "sum", "base", "snap", ["a1"])
    registry.set_metrics("dpo-2", {"loss": 1.5})
    assert registry.interrupt_running() == ["cyc-2"]
    # the interrupted cycle trained but its candidates were rejected: its signal is still new
    assert registry.signal_since_last_cycle() == 1
    assert [(a["version"], a["status"], json.loads(a["metrics"])) for a in registry.adapters()] == [
        ("dpo-2", "rejected", {"loss": 1.5, "rejected_because": "cycle cyc-2 was interrupted"}),
        ("kto-1", "rejected", {"rejected_because": "worse than the active one"})]


def test_retention_and_the_judging_sweep_run_on_both_backends(any_store):
    def conversation(conn, name: str, days_old: int, judge_failed_minutes_ago: int) -> None:
        at = f"current_timestamp - INTERVAL '{days_old} days'"
        conn.execute(f"INSERT INTO conversations (id, user_id, created_at) VALUES (?, 'u1', {at})", [name])
        conn.execute(f"INSERT INTO messages (id, conversation_id, role, content, created_at) VALUES (?, ?, 'user', 'q', {at})",
                     [f"q-{name}", name])
        conn.execute("INSERT INTO prompts (id, messages) VALUES (?, '[]')", [f"p-{name}"])
        conn.execute("INSERT INTO messages (id, conversation_id, parent_id, role, content, prompt_id, created_at)"
                     f" VALUES (?, ?, ?, 'assistant', 'a', ?, {at})", [f"a-{name}", name, f"q-{name}", f"p-{name}"])
        conn.execute("INSERT INTO judge_attempts (message_id, judge, attempts, last_error, last_at) VALUES"
                     f" (?, 'self', 1, 'timeout', current_timestamp - INTERVAL '{judge_failed_minutes_ago} minutes')",
                     [f"a-{name}"])

    any_store.write(lambda conn: conversation(conn, "old", 40, 30))
    any_store.write(lambda conn: conversation(conn, "new", 1, 0))
    asyncio.run(ChatRecord(any_store).vote("u1", "a-old", "down", None, None))
    # a failure 30 minutes ago is retried after 10; one just now is not
    assert [r["message_id"] for r in JudgmentRecord(any_store).unjudged("self", 600, 3)] == ["a-old"]

    report = purge_expired(any_store, "system:retention", 30)
    assert (report.conversations, report.messages) == (1, 2)
    assert [r["id"] for r in any_store.read("SELECT id FROM conversations")] == ["new"]
    assert [r["id"] for r in any_store.read("SELECT id FROM prompts")] == ["p-new"]
    assert any_store.read_one("SELECT count(*) FROM feedback")[0] == 0
    assert audit_rows(any_store)[0]["action"] == "retention.purge"


def test_cli_commands_open_the_record_the_database_url_names(postgres_url, tmp_path):
    created = run_cli("users", "create", "olga", "--role", "operator", data_dir=tmp_path, CARECYCLE_DATABASE_URL=postgres_url)
    assert created.returncode == 0, created.stderr
    listed = run_cli("users", "list", data_dir=tmp_path, CARECYCLE_DATABASE_URL=postgres_url)
    assert listed.returncode == 0 and listed.stdout.split() == ["olga", "operator"]
    assert not (tmp_path / "carecycle.duckdb").exists()  # the DuckDB file was never opened
    with PgStore(postgres_url) as store:
        assert [(r["actor"], r["action"], r["target"]) for r in audit_rows(store)] == [("cli", "user.create", "olga")]


@pytest.mark.parametrize("url, words", [
    ("mysql://carecycle:secret@dbhost/record", "CARECYCLE_DATABASE_URL=(not shown: it may hold a password): "
                                               "CARECYCLE_DATABASE_URL takes a PostgreSQL URL"),
    ("postgresql://carecycle:secret@127.0.0.1:1/record", "cannot reach the PostgreSQL record at carecycle@127.0.0.1:1/record"),
])
def test_a_wrong_database_url_is_one_line_without_its_password(tmp_path, url, words):
    result = run_cli("users", "list", data_dir=tmp_path, CARECYCLE_DATABASE_URL=url)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert words in lines[0] and "secret" not in lines[0]
