"""`carecycle db copy --to postgresql://…`: every table of a DuckDB record, the audit trail
included, lands in an empty PostgreSQL database with equal counts and checksums; a database
that is not empty is refused in one line. A real server (tests/postgres_server.py)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from feedback.audit import audit
from feedback.chat_record import Answer, ChatRecord
from feedback.judgment_record import JudgmentRecord, JudgmentRow
from feedback.pg_copy import fingerprint
from feedback.pg_store import PgStore
from feedback.store import Store
from tests.test_cli import run_cli

pytestmark = pytest.mark.postgres


def _fill(store, exchanges: int) -> None:
    chats, judgments = ChatRecord(store), JudgmentRecord(store)

    async def fill() -> None:
        for n in range(exchanges):
            turn = await chats.start_turn(f"u{n % 3}", None, f"question {n}: 50% dose?")
            answer = Answer(f"answer {n}", "complete", "m", "v1", 3, 2, 1.5 + n,
                            prompt=[{"role": "user", "content": f"question {n}: 50% dose?"}])
            message_id = await chats.add_answer(turn, answer)
            await chats.vote(f"u{n % 3}", message_id, "down" if n % 2 else "up", None, "é ✓")
            await judgments.add(JudgmentRow(message_id, "self", "1", "Caution", 2, 0.5, 0.5, False, False, None))

    asyncio.run(fill())
    store.write(lambda conn: audit(conn, "cli", "users.create", "op1", role="operator"))


def _counts(store, tables) -> dict[str, int]:
    return {table: store.read_one(f'SELECT count(*) FROM "{table}"')[0] for table in tables}


def test_db_copy_moves_every_table_and_proves_it(tmp_path, postgres_url):
    data_dir = tmp_path / "data"
    with Store(data_dir / "carecycle.duckdb") as duck:
        _fill(duck, exchanges=6)
        duck.write(lambda conn: conn.execute(
            "INSERT INTO cycles (id, status, trigger, detail) VALUES ('cy1', 'kept', 'cli', '{\"gain\": 0.25}')"))
        tables = [r["table_name"] for r in duck.read(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            " AND table_name <> 'schema_migrations' ORDER BY table_name")]
        source_counts = _counts(duck, tables)
        source_audit = duck.read("SELECT seq, actor, action, target, detail, created_at FROM audit_log ORDER BY seq")

    result = run_cli("db", "copy", "--to", postgres_url, data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    *per_table, summary = result.stdout.strip().splitlines()
    assert sorted(line.split(":")[0] for line in per_table) == tables
    assert f"copied {sum(source_counts.values())} rows in {len(tables)} tables" in summary
    assert summary.endswith("every count and checksum matches")

    with PgStore(postgres_url) as pg:
        assert _counts(pg, tables) == source_counts
        assert source_counts["messages"] == 12 and source_counts["audit_log"] == 1
        assert pg.read("SELECT seq, actor, action, target, detail, created_at FROM audit_log ORDER BY seq") == source_audit
        assert pg.read_one("SELECT detail FROM cycles WHERE id = 'cy1'")[0] == '{"gain": 0.25}'
        # the copied record goes on: new votes and audit rows take the next sequence numbers
        _fill(pg, exchanges=1)
        assert pg.read_one("SELECT max(seq) FROM audit_log")[0] == 2
        assert pg.read_one("SELECT count(DISTINCT seq) FROM feedback")[0] == 7


def test_db_copy_refuses_a_database_that_is_not_empty(tmp_path, postgres_url):
    data_dir = tmp_path / "data"
    with Store(data_dir / "carecycle.duckdb") as duck:
        _fill(duck, exchanges=1)
    with PgStore(postgres_url) as pg:
        pg.write(lambda conn: audit(conn, "cli", "already.here", None))

    result = run_cli("db", "copy", "--to", postgres_url, data_dir=data_dir)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "is not empty (it has audit_log)" in lines[0] and "new, empty database" in lines[0]
    with PgStore(postgres_url) as pg:  # nothing was added to it
        assert pg.read_one("SELECT count(*) FROM conversations")[0] == 0


def test_db_copy_without_a_record_names_the_setting(tmp_path, postgres_url):
    result = run_cli("db", "copy", "--to", postgres_url, data_dir=tmp_path / "nothing")
    assert result.returncode == 2
    assert "no record at" in result.stderr and "CARECYCLE_DATA_DIR" in result.stderr


def test_fingerprint_ignores_row_order_and_time_zones_but_not_values():
    utc = datetime(2026, 11, 28, 4, 0, tzinfo=timezone.utc)
    rows = [("a", 1, utc, None, 0.1), ("b", 2, utc, '{"k": 1}', 2.5)]
    count, checksum = fingerprint(rows)
    assert count == 2
    assert fingerprint(reversed(rows)) == (2, checksum)
    assert fingerprint([("a", 1, utc.astimezone(timezone(timedelta(hours=2))), None, 0.1), rows[1]]) == (2, checksum)
    assert fingerprint([("a", 1, utc, None, 0.1000001), rows[1]])[1] != checksum
    assert fingerprint(rows + rows[:1])[1] != checksum  # a duplicated row counts


def test_db_copy_with_a_malformed_url_says_how_to_write_one(tmp_path):
    result = run_cli("db", "copy", "--to", "host=dbhost password=secret =", data_dir=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a PostgreSQL URL" in lines[0] and "postgresql://user:password@host:5432/dbname" in lines[0]
    assert "secret" not in lines[0]


def _awkward_exchange(store) -> str:
    """One exchange whose values a CSV round trip could bend: quotes, commas, newlines, an empty
    string beside a NULL, text that reads like a null ('NA'), a non-terminating fraction."""
    async def exchange() -> str:
        chats = ChatRecord(store)
        question = 'Is 100% of the "dose", safe?\nSay NA if unsure.'
        turn = await chats.start_turn("alice", None, question)
        answer = Answer("NA", "complete", "m", None, 5, 4, 1 / 3, prompt=[{"role": "user", "content": question}])
        message_id = await chats.add_answer(turn, answer)
        await chats.vote("alice", message_id, "down", "", None)  # an empty reason stays empty, no comment stays NULL
        await JudgmentRecord(store).add(JudgmentRow(message_id, "self", "1", "Caution", 2, 0.9, 0.5, False, True, "{}"))
        return message_id

    return asyncio.run(exchange())


def test_a_snapshot_of_the_copied_record_equals_the_duckdb_one(tmp_path, postgres_url):
    """The PostgreSQL snapshot (COPY out of one repeatable-read transaction) writes the Parquet files
    the DuckDB one writes for the same record: the same columns, types and rows (DuckDB also marks
    its NOT NULL columns required; readers see no difference)."""
    import duckdb
    import pyarrow.parquet as pq

    from retrain.datasets.snapshot import write_snapshot

    data_dir = tmp_path / "data"
    with Store(data_dir / "carecycle.duckdb") as duck:
        _fill(duck, exchanges=3)
        _awkward_exchange(duck)
        from_duckdb = write_snapshot(duck, tmp_path / "from-duckdb")
    assert run_cli("db", "copy", "--to", postgres_url, data_dir=data_dir).returncode == 0
    with PgStore(postgres_url) as pg:
        from_postgresql = write_snapshot(pg, tmp_path / "from-postgresql")

    assert from_postgresql.row_counts == from_duckdb.row_counts
    assert from_postgresql.row_counts["messages"] == 8 and from_postgresql.schema_version == from_duckdb.schema_version
    reader = duckdb.connect()
    for table in from_duckdb.row_counts:
        files = [str(snapshot.path / f"{table}.parquet") for snapshot in (from_duckdb, from_postgresql)]
        schemas = [[(field.name, field.type) for field in pq.read_schema(file)] for file in files]
        assert schemas[1] == schemas[0], table
        rows = [reader.execute("SELECT * FROM read_parquet(?) ORDER BY ALL", [file]).fetchall() for file in files]
        assert rows[1] == rows[0], table
    awkward = reader.execute("SELECT content FROM read_parquet(?) WHERE role = 'assistant' AND content = 'NA'",
                             [str(from_postgresql.path / "messages.parquet")]).fetchall()
    assert awkward == [("NA",)]  # text, not NULL


def test_the_copied_record_serves(settings, tiny_engine, postgres_url):
    """After `db copy`, a server on CARECYCLE_DATABASE_URL shows a user her history and takes her vote
    and her next question (the sequences continue after the copied rows)."""
    from feedback.accounts import Accounts
    from tests.conftest import start_server

    with Store(settings.record_path) as duck:
        key = Accounts(duck).create("cli", "alice", "user")
        answer_id = _awkward_exchange(duck)
    assert run_cli("db", "copy", "--to", postgres_url, data_dir=settings.data_dir).returncode == 0

    on_postgresql = settings.model_copy(update={"database_url": postgres_url})
    with start_server(on_postgresql, tiny_engine) as live, httpx.Client(base_url=live.url, timeout=60) as client:
        alice = {"Authorization": f"Bearer {key}"}
        history = client.get("/api/conversations", headers=alice).json()["data"]
        assert [c["messages"] for c in history] == [2]
        messages = client.get(f"/api/conversations/{history[0]['id']}", headers=alice).json()["messages"]
        assert [(m["role"], m["content"]) for m in messages] == [
            ("user", 'Is 100% of the "dose", safe?\nSay NA if unsure.'), ("assistant", "NA")]
        vote = client.post("/api/feedback", headers=alice, json={"message_id": answer_id, "rating": "up"})
        assert vote.status_code == 200 and vote.json()["replaced"] is True
        follow_up = client.post("/v1/chat/completions", headers=alice, json={
            "messages": [{"role": "user", "content": "And for a child?"}], "metadata": {"conversation_id": history[0]["id"]}})
        assert follow_up.status_code == 200
        assert live.store.read("SELECT rating FROM current_feedback WHERE message_id = ?", [answer_id]) == [{"rating": "up"}]
        assert live.store.read_one("SELECT count(*) FROM messages WHERE conversation_id = ?", [history[0]["id"]])[0] == 4
