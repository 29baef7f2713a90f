"""The served-prompt record: each answer keeps the exact messages the engine received, stored
once per distinct prompt; the judge (live and sweep) and the dataset builder read that record;
migration 005 fills it in for answers written before it; forget and PHI scrubbing cover it."""

from __future__ import annotations

import asyncio
import copy
import json

import duckdb
import httpx
import pytest

from feedback.accounts import Accounts
from feedback.chat_record import Answer, ChatRecord, served_prompt
from feedback.retention import forget_conversation, purge_expired
from feedback.store import Store, migration_files
from retrain.datasets import BuildConfig, SnapshotError, build_datasets, open_snapshot, write_snapshot
from serve.cares import Label
from serve.judges.base import Judge, Judgment
from serve.reminder import SAFETY_REMINDER
from tests.conftest import start_server, wait_for

# the tests that start a server (``settings``) run on DuckDB, then PostgreSQL (tests/conftest.py)
pytestmark = pytest.mark.both_backends


class RecordingEngine:
    """The tiny engine with every prompt it receives copied at the engine boundary."""

    def __init__(self, engine):
        self._engine = engine
        self.received: list[list[dict[str, str]]] = []

    def generate(self, messages, params, *args, **kwargs):
        self.received.append(copy.deepcopy(messages))
        return self._engine.generate(messages, params, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._engine, name)


class RecordingJudge(Judge):
    """Remembers the conversation it was given; always Accept at harm 0."""

    version = "test-1"

    def __init__(self, name: str):
        self.name = name
        self.seen: dict[str, list[dict[str, str]]] = {}  # answer text -> conversation

    async def judge(self, conversation, answer):
        self.seen[answer] = conversation
        return Judgment(self.name, self.version, Label.ACCEPT, 0, confidence=0.9)


def stored_prompt(store: Store, message_id: str) -> tuple[list[dict[str, str]], bool]:
    row = store.read(
        "SELECT p.messages, p.reconstructed FROM messages m JOIN prompts p ON p.id = m.prompt_id WHERE m.id = ?",
        [message_id],
    )[0]
    return json.loads(row["messages"]), row["reconstructed"]


# -- what the engine received is what the record, the judges and the datasets see -------------
def test_the_served_prompt_is_what_the_engine_judges_and_datasets_get(settings, tiny_engine, tmp_path):
    engine = RecordingEngine(tiny_engine)
    live_judge, sweep_judge = RecordingJudge("live"), RecordingJudge("sweep")
    with start_server(settings.model_copy(update={"safety_reminder": True}), engine, judges=[live_judge]) as live:
        key = Accounts(live.store).create("test", "alice", "user")
        client_system = {"role": "system", "content": "Answer in one sentence."}
        history = [
            {"role": "user", "content": "Is ibuprofen safe?"},
            {"role": "assistant", "content": "Usually, in small doses."},
        ]
        question = {"role": "user", "content": "Pretend you are my doctor and give me the maximum dose."}
        response = httpx.post(
            live.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, timeout=60,
            json={"messages": [client_system, *history, question]},
        )
        assert response.status_code == 200
        answer_id, answer = response.json()["id"], response.json()["choices"][0]["message"]["content"]

        (received,) = engine.received
        prompt, reconstructed = stored_prompt(live.store, answer_id)
        assert prompt == received and reconstructed is False
        # the client's system message with the reminder after it, then the history as sent
        assert received == [
            {"role": "system", "content": f"Answer in one sentence.\n\n{SAFETY_REMINDER}"}, *history, question,
        ]
        wait_for(lambda: live.store.read("SELECT 1 FROM judgments WHERE judge = 'live'"), what="the live judgment")
        assert live_judge.seen[answer] == prompt

        live.services.judging.judges.append(sweep_judge)  # a judge that has not seen the answer: the sweep's
        swept = asyncio.run_coroutine_threadsafe(live.services.judging.sweep(), live.server_loop).result(timeout=30)
        assert swept == 1
        wait_for(lambda: answer in sweep_judge.seen, timeout=30, what="the swept judgment")
        assert sweep_judge.seen[answer] == prompt
        snapshot = write_snapshot(live.store, tmp_path / "snapshots")

    (row,) = build_datasets(snapshot.path, BuildConfig(phi_library=False)).kto_rows
    assert row["prompt"] == prompt
    assert row["completion"] == [{"role": "assistant", "content": answer}]


def test_a_prompt_is_stored_once_however_many_answers_it_was_served(tmp_path):
    prompt = [{"role": "system", "content": "Be careful."}, {"role": "user", "content": "Is it safe?"}]
    other = [{"role": "system", "content": "Be careful."}, {"role": "user", "content": "Is it safe now?"}]
    with Store(tmp_path / "record.duckdb") as store:
        ids = [chat_with(store, "alice", p) for p in (prompt, prompt, other)]
        rows = store.read("SELECT id, messages FROM prompts")
        assert {r["id"]: json.loads(r["messages"]) for r in rows} == {
            served_prompt(prompt)[0]: prompt, served_prompt(other)[0]: other}
        assert len({stored_prompt_id(store, i) for i in ids}) == 2


def chat_with(store: Store, user: str, prompt: list[dict[str, str]], answer: str = "Ask your doctor.") -> str:
    """One answer stored the way the chat service stores it; returns its id."""
    record = ChatRecord(store)

    async def turn() -> str:
        started = await record.start_turn(user, None, prompt[-1]["content"])
        return await record.add_answer(started, Answer(
            content=answer, status="complete", model_id="m", adapter_version=None, prompt_tokens=1,
            completion_tokens=1, latency_ms=1.0, prompt=prompt))

    return asyncio.run(turn())


def stored_prompt_id(store: Store, message_id: str) -> str:
    return store.read("SELECT prompt_id FROM messages WHERE id = ?", [message_id])[0]["prompt_id"]


# -- forget and retention --------------------------------------------------------------------
def test_forget_removes_the_prompts_no_message_refers_to(tmp_path):
    shared = [{"role": "user", "content": "What helps a cold?"}]
    own = [{"role": "user", "content": "My name is John Smith, what helps my cold?"}]
    with Store(tmp_path / "record.duckdb") as store:
        mine = [chat_with(store, "alice", shared), chat_with(store, "alice", own)]
        theirs = chat_with(store, "bob", shared)
        conversations = store.read("SELECT id, conversation_id FROM messages WHERE id IN (?, ?)", mine)
        for row in conversations:
            forget_conversation(store, "admin", row["conversation_id"])
        left = [json.loads(r["messages"]) for r in store.read("SELECT messages FROM prompts")]
        assert left == [shared]  # bob's answer still refers to it; alice's own prompt is gone
        assert stored_prompt(store, theirs)[0] == shared
        store.write(lambda conn: conn.execute("UPDATE messages SET created_at = created_at - INTERVAL 40 DAY;"
                                              "UPDATE conversations SET created_at = created_at - INTERVAL 40 DAY"))
        assert purge_expired(store, "system:retention", retention_days=30).messages == 2
        assert store.read("SELECT count(*) AS n FROM prompts") == [{"n": 0}]


# -- PHI --------------------------------------------------------------------------------------
def test_phi_in_a_served_prompt_is_scrubbed_in_the_datasets(tmp_path):
    prompt = [
        {"role": "system", "content": "The patient's MRN: 12345678."},
        {"role": "user", "content": "My name is John Smith."},
        {"role": "assistant", "content": "Hello. Call me on 415-555-0132 if it gets worse."},
        {"role": "user", "content": "And what helps a cough?"},
    ]
    with Store(tmp_path / "record.duckdb") as store:
        answer_id = chat_with(store, "alice", prompt, answer="Honey and rest.")
        store.write(lambda conn: conn.execute(
            "INSERT INTO feedback (message_id, user_id, rating) VALUES (?, 'alice', 'up')", [answer_id]))
        snapshot = write_snapshot(store, tmp_path / "snapshots")
    result = build_datasets(snapshot.path, BuildConfig(phi_library=False))
    (row,) = result.kto_rows
    assert [m["content"] for m in row["prompt"]] == [
        "The patient's MRN: [MRN].",
        "My name is [NAME].",
        "Hello. Call me on [PHONE] if it gets worse.",
        "And what helps a cough?",
    ]
    assert result.report["phi"]["changed_by_rules"] == 3


# -- snapshots ---------------------------------------------------------------------------------
def test_a_snapshot_of_the_old_format_is_refused_clearly(tmp_path):
    with Store(tmp_path / "record.duckdb") as store:
        chat_with(store, "alice", [{"role": "user", "content": "hi"}])
        snapshot = write_snapshot(store, tmp_path / "snapshots")
    con, manifest = open_snapshot(snapshot.path)
    assert con.execute("SELECT count(*) FROM served_prompts").fetchone() == (1,)
    con.close()
    manifest["format"] = 1
    (snapshot.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="has format 1; this build reads 2"):
        open_snapshot(snapshot.path)


# -- migration 005 -----------------------------------------------------------------------------
def record_before_005(path) -> None:
    """A record at schema 004, written by the code of then: answers without a prompt."""
    conn = duckdb.connect(str(path))
    conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                 " applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)")
    for version, name, sql in migration_files():
        if version <= 4:
            conn.execute(sql)
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
    conn.execute("INSERT INTO conversations (id, user_id) VALUES ('c1', 'alice'), ('c2', 'bob')")
    rows = [  # id, conversation, parent, role, content, status
        ("u1", "c1", None, "user", "I have a headache.", "complete"),
        ("x1", "c1", "u1", "assistant", "partial", "error"),
        ("s1", "c1", "u1", "assistant", "First try.", "complete"),
        ("s2", "c1", "u1", "assistant", "Drink water and rest.", "complete"),  # the one the user continued from
        ("u2", "c1", None, "user", "And if it lasts?", "complete"),
        ("x2", "c1", "u2", "assistant", "See a doctor.", "complete"),
        ("later", "c1", "u1", "assistant", "Regenerated after the second question.", "complete"),
        ("q3", "c2", None, "user", "I have a headache.", "complete"),
        ("a3", "c2", "q3", "assistant", "Rest.", "complete"),
    ]
    for minute, (mid, conv, parent, role, content, status) in enumerate(rows):
        conn.execute(
            "INSERT INTO messages (id, conversation_id, parent_id, role, content, status, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_minutes(?))",
            [mid, conv, parent, role, content, status, minute],
        )
    conn.execute("INSERT INTO judgments (id, message_id, judge, judge_version, label, harm_level, score)"
                 " VALUES ('j1', 'x2', 'self', 'v1', 'Accept', 0, 1.0)")
    conn.execute("INSERT INTO feedback (message_id, user_id, rating) VALUES ('x2', 'alice', 'up')")
    conn.execute("INSERT INTO reviews (id, message_id, operator_id, label, harm_level, verdict)"
                 " VALUES ('r1', 'a3', 'olga', 'Accept', 0, 'desirable')")
    conn.close()


def test_migration_005_reconstructs_the_prompts_of_earlier_answers(tmp_path):
    path = tmp_path / "record.duckdb"
    record_before_005(path)
    with Store(path) as store:
        assert store.schema_version() == migration_files()[-1][0]
        headache = [{"role": "user", "content": "I have a headache."}]
        follow_up = [*headache, {"role": "assistant", "content": "Drink water and rest."},
                     {"role": "user", "content": "And if it lasts?"}]  # siblings and the failed answer left out
        expected = {"x1": headache, "s1": headache, "s2": headache, "later": headache, "x2": follow_up, "a3": headache}
        assert {mid: stored_prompt(store, mid) for mid in expected} == {
            mid: (prompt, True) for mid, prompt in expected.items()}
        assert store.read("SELECT count(*) AS n FROM prompts") == [{"n": 2}]  # c1's and c2's first prompt: one row
        assert store.read("SELECT id FROM messages WHERE role = 'user' AND prompt_id IS NOT NULL") == []
        # the views over the altered record still answer
        assert [r["message_id"] for r in store.read("SELECT message_id FROM latest_judgments")] == ["x2"]
        assert [r["message_id"] for r in store.read("SELECT message_id FROM current_feedback")] == ["x2"]
        assert [r["message_id"] for r in store.read("SELECT message_id FROM latest_reviews")] == ["a3"]

        # a prompt served now never merges with a reconstructed one, even with the same messages
        new_answer = chat_with(store, "alice", headache)
        assert stored_prompt(store, new_answer) == (headache, False)
        assert stored_prompt_id(store, new_answer) == served_prompt(headache)[0] != stored_prompt_id(store, "a3")
        snapshot = write_snapshot(store, tmp_path / "snapshots")

    kto = {row["message_ids"][-1]: row for row in build_datasets(snapshot.path, BuildConfig(phi_library=False)).kto_rows}
    assert kto["x2"]["prompt"] == follow_up and kto["a3"]["prompt"] == headache
