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
