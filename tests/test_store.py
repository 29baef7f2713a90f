"""The record: migrations, the single writer, persistence, clear errors."""

import pytest

from feedback.errors import StoreError
from feedback.store import Store, migration_files


def test_migrations_apply_once_and_persist(tmp_path):
    path = tmp_path / "rec.duckdb"
    with Store(path) as store:
        assert store.schema_version() == migration_files()[-1][0]
        tables = {r["table_name"] for r in store.read("SELECT table_name FROM information_schema.tables")}
        assert {"conversations", "messages", "feedback", "judgments", "reviews", "adapters", "cycles", "audit_log"} <= tables
        store.write(lambda c: c.execute("INSERT INTO conversations (id, user_id) VALUES ('c1', 'u1')"))
    with Store(path) as store:  # reopening neither re-applies migrations nor loses rows
        assert store.read("SELECT count(*) AS n FROM schema_migrations")[0]["n"] == len(migration_files())
        assert store.read("SELECT user_id FROM conversations WHERE id = 'c1'") == [{"user_id": "u1"}]


def test_failed_write_rolls_back_and_reaches_the_caller(tmp_path):
    with Store(tmp_path / "rec.duckdb") as store:
        def half_then_fail(conn):
            conn.execute("INSERT INTO conversations (id, user_id) VALUES ('c1', 'u1')")
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            store.write(half_then_fail)
        assert store.read("SELECT count(*) AS n FROM conversations")[0]["n"] == 0
        # the writer thread survived and still writes
        store.write(lambda c: c.execute("INSERT INTO conversations (id, user_id) VALUES ('c2', 'u1')"))
        assert store.read("SELECT id FROM conversations") == [{"id": "c2"}]


def test_corrupt_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "rec.duckdb"
    path.write_bytes(b"this is not a duckdb file" * 100)
    with pytest.raises(StoreError, match="cannot open the record at .*rec.duckdb"):
        Store(path).open()


def test_closed_store_refuses_writes(tmp_path):
    store = Store(tmp_path / "rec.duckdb")
    with pytest.raises(StoreError, match="not open"):
        store.write(lambda c: None)


def _insert_conversation(conversation_id: str):
    def task(conn):
        conn.execute("INSERT INTO conversations (id, user_id) VALUES (?, 'u1')", [conversation_id])
        return conversation_id

    return task


def _blocked_writer(store):
    """Hold the writer thread inside a task until the returned event is set, so that what is
    queued meanwhile is committed as one batch."""
    import threading

    started, release = threading.Event(), threading.Event()
    store.submit(lambda conn: (started.set(), release.wait(30)))
    assert started.wait(30)
    return release


def test_concurrent_writes_are_each_acknowledged_once_and_all_stored(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with Store(tmp_path / "rec.duckdb", max_batch=16) as store:
        release = _blocked_writer(store)
        futures = [store.submit(_insert_conversation(f"c{i}")) for i in range(100)]  # queued while the writer waits
        release.set()
        assert [f.result(timeout=30) for f in futures] == [f"c{i}" for i in range(100)]
        with ThreadPoolExecutor(8) as pool:  # and from many threads at once
            acknowledged = list(pool.map(lambda i: store.write(_insert_conversation(f"t{i}")), range(100)))
        assert acknowledged == [f"t{i}" for i in range(100)]
        stored = [r["id"] for r in store.read("SELECT id FROM conversations ORDER BY id")]
        assert sorted(stored) == sorted([f"c{i}" for i in range(100)] + [f"t{i}" for i in range(100)])


def test_a_poisoned_write_in_a_batch_fails_alone(tmp_path):
    with Store(tmp_path / "rec.duckdb") as store:
        release = _blocked_writer(store)
        before = [store.submit(_insert_conversation(f"a{i}")) for i in range(5)]
        poisoned = store.submit(_insert_conversation("a0"))  # duplicate key of a row earlier in its own batch
        after = [store.submit(_insert_conversation(f"b{i}")) for i in range(5)]
        release.set()
        assert [f.result(timeout=30) for f in before + after] == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]
        with pytest.raises(Exception, match="(?i)duplicate key|constraint"):
            poisoned.result(timeout=30)
        stored = sorted(r["id"] for r in store.read("SELECT id FROM conversations"))
        assert stored == [f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)]


def test_a_result_comes_only_after_its_batch_is_committed(tmp_path):
    path = tmp_path / "rec.duckdb"
    store = Store(path).open()
    store.write(_insert_conversation("c1"))
    store.close()  # a clean close; reopen and the acknowledged row is there
    with Store(path) as reopened:
        assert reopened.read("SELECT id FROM conversations") == [{"id": "c1"}]


def test_a_full_queue_refuses_at_once(tmp_path):
    from feedback.errors import StoreBusyError

    with Store(tmp_path / "rec.duckdb", max_queued=2) as store:
        release = _blocked_writer(store)
        queued = [store.submit(_insert_conversation(f"c{i}")) for i in range(2)]
        with pytest.raises(StoreBusyError, match="2 writes waiting; try again shortly") as refused:
            store.submit(_insert_conversation("c9"))
        assert refused.value.retry_after_s > 0
        release.set()
        assert [f.result(timeout=30) for f in queued] == ["c0", "c1"]
        assert store.write(_insert_conversation("c9")) == "c9"  # accepted again once there is room


def test_a_full_writer_queue_answers_503_with_retry_after_over_http(settings, tiny_engine):
    import httpx

    from tests.conftest import start_server

    with start_server(settings.model_copy(update={"write_queue_limit": 1}), tiny_engine) as live:
        release = _blocked_writer(live.store)
        waiting = live.store.submit(_insert_conversation("c1"))  # the queue's one place is taken
        try:
            response = httpx.post(f"{live.url}/api/feedback", json={"message_id": "m1", "rating": "up"}, timeout=30)
        finally:
            release.set()
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "1"
        assert "writes waiting; try again shortly" in response.json()["error"]["message"]
        assert waiting.result(timeout=30) == "c1"
        # room again: the same vote now reaches the record (and is refused there for its unknown id)
        assert httpx.post(f"{live.url}/api/feedback", json={"message_id": "m1", "rating": "up"}, timeout=30).status_code == 404


def _conversations_in_one_statement(calls: list[list[str]]):
    """A run_many that inserts conversation ids in one INSERT, refuses ids starting 'refuse',
    and records each call's rows."""

    def run_many(conn, ids):
        calls.append(list(ids))
        accepted = [i for i in ids if not i.startswith("refuse")]
        if accepted:
            conn.execute(f"INSERT INTO conversations (id, user_id) VALUES {', '.join(['(?, ?)'] * len(accepted))}",
                         [value for i in accepted for value in (i, "u1")])
        return [ValueError(f"refused {i}") if i.startswith("refuse") else i for i in ids]

    return run_many


def test_queued_rows_go_in_as_one_statement_and_each_caller_gets_its_own_outcome(tmp_path):
    from feedback.store import BatchWrite

    calls: list[list[str]] = []
    run_many = _conversations_in_one_statement(calls)
    with Store(tmp_path / "rec.duckdb") as store:
        release = _blocked_writer(store)
        rows = [store.submit(BatchWrite(run_many, i)) for i in ("r1", "refuse-me", "r2")]
        plain = store.submit(_insert_conversation("p1"))  # not a row: it ends the group
        more = [store.submit(BatchWrite(run_many, i)) for i in ("r3", "r4")]
        release.set()
        assert [rows[0].result(30), rows[2].result(30), plain.result(30)] == ["r1", "r2", "p1"]
        assert [f.result(30) for f in more] == ["r3", "r4"]
        with pytest.raises(ValueError, match="refused refuse-me"):
            rows[1].result(30)
        assert calls == [["r1", "refuse-me", "r2"], ["r3", "r4"]]
        assert sorted(r["id"] for r in store.read("SELECT id FROM conversations")) == ["p1", "r1", "r2", "r3", "r4"]


def test_a_row_that_breaks_its_batch_statement_fails_alone(tmp_path):
    from feedback.store import BatchWrite

    calls: list[list[str]] = []
    run_many = _conversations_in_one_statement(calls)
    with Store(tmp_path / "rec.duckdb") as store:
        store.write(_insert_conversation("taken"))
        release = _blocked_writer(store)
        futures = [store.submit(BatchWrite(run_many, i)) for i in ("r1", "taken", "r2")]  # a duplicate key
        release.set()
        assert [futures[0].result(30), futures[2].result(30)] == ["r1", "r2"]
        with pytest.raises(Exception, match="(?i)duplicate key|constraint"):
            futures[1].result(30)
        # the statement for all three failed, then each row ran alone (the failing one is dropped, the rest rerun)
        assert calls[0] == ["r1", "taken", "r2"] and ["taken"] in calls[1:]
        assert sorted(r["id"] for r in store.read("SELECT id FROM conversations")) == ["r1", "r2", "taken"]


def _voting_record(store):
    store.write(lambda conn: conn.execute(
        "INSERT INTO conversations (id, user_id) VALUES ('c1', 'u1'), ('c2', 'u2');"
        "INSERT INTO messages (id, conversation_id, role, content) VALUES"
        " ('q1', 'c1', 'user', 'q'), ('q2', 'c2', 'user', 'q');"
        "INSERT INTO messages (id, conversation_id, parent_id, role, content) VALUES"
        " ('a1', 'c1', 'q1', 'assistant', 'a'), ('a2', 'c2', 'q2', 'assistant', 'a')"))


def test_votes_queued_together_are_written_together_and_judged_one_by_one(tmp_path):
    import asyncio

    from feedback.chat_record import ChatRecord
    from feedback.errors import NotFoundError

    with Store(tmp_path / "rec.duckdb") as store:
        _voting_record(store)
        record = ChatRecord(store)

        async def votes():
            first = await record.vote("u1", "a1", "up", None, None)
            release = _blocked_writer(store)
            queued = [asyncio.ensure_future(record.vote(*v)) for v in (
                ("u1", "a1", "down", "unsafe", None),  # replaces the vote before the batch
                ("u1", "a2", "up", None, None),  # someone else's answer: unknown to u1
                ("u2", "a2", "up", None, None),
                ("u2", "a2", "down", None, "changed my mind"),  # replaces the one just before, same batch
            )]
            await asyncio.sleep(0.05)  # all four queued behind the blocked writer
            release.set()
            return first, await asyncio.gather(*queued, return_exceptions=True)

        first, (replaced, refused, u2_first, u2_second) = asyncio.run(votes())
        assert first == {"message_id": "a1", "rating": "up", "replaced": False}
        assert replaced == {"message_id": "a1", "rating": "down", "replaced": True}
        assert isinstance(refused, NotFoundError) and "unknown message 'a2'" in str(refused)
        assert u2_first == {"message_id": "a2", "rating": "up", "replaced": False}
        assert u2_second == {"message_id": "a2", "rating": "down", "replaced": True}
        current = store.read("SELECT message_id, user_id, rating, reason, comment FROM current_feedback ORDER BY user_id")
        assert current == [
            {"message_id": "a1", "user_id": "u1", "rating": "down", "reason": "unsafe", "comment": None},
            {"message_id": "a2", "user_id": "u2", "rating": "down", "reason": None, "comment": "changed my mind"},
        ]
        assert store.read_one("SELECT count(*) FROM feedback")[0] == 4
