"""Past one machine, the pieces one by one on a real PostgreSQL cluster (tests/postgres_server.py):
the worker's election, cycles queued by a replica that runs none, rate limits counted in the
record, and the settings that tie them together. tests/test_replicas.py runs them as processes."""

from __future__ import annotations

import asyncio

import httpx
import psycopg
import pytest
from pydantic import ValidationError

from feedback.accounts import Accounts
from feedback.coordination import CycleRequests
from feedback.errors import ConflictError
from feedback.pg_store import PgStore
from feedback.registry_record import RegistryRecord
from serve.errors import RateLimitedError
from serve.rate_limit import SharedRateLimiter
from tests.conftest import start_server
from tests.test_chat_api import bearer

pytestmark = pytest.mark.postgres


def test_one_worker_is_elected_and_a_standby_takes_over_when_its_connection_drops(postgres_url):
    from deploy.worker import Election, LostElection

    with PgStore(postgres_url) as store:
        first, second = Election(store, retry_s=0.1), Election(store, retry_s=0.1)
        assert first.try_win()
        assert not second.try_win()
        first.check()  # still held
        with psycopg.connect(postgres_url, autocommit=True) as admin:  # the first worker's machine vanishes
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted")
        with pytest.raises(LostElection, match="lost the connection that held the worker lock"):
            first.check()
        asyncio.run(asyncio.wait_for(second.win(), 30))  # the standby retries until the server released the lock
        assert not first.try_win()
        second.release()
        assert first.try_win()
        first.release()


def test_a_replica_queues_the_cycle_for_the_worker_and_runs_none(settings, tiny_engine, postgres_url):
    replica = settings.model_copy(update={"database_url": postgres_url, "worker": "external", "cycle_enabled": True})
    with start_server(replica, tiny_engine) as live:
        admin = Accounts(live.store).create("t", "ada", "admin")
        with httpx.Client(base_url=live.url, timeout=60) as http:
            asked = http.post("/api/admin/cycles", headers=bearer(admin))
            assert asked.status_code == 202 and asked.json()["status"] == "queued"
            request_id = asked.json()["request_id"]
            again = http.post("/api/admin/cycles", headers=bearer(admin)).json()  # one waiting request, not two
            assert again == {"request_id": request_id, "status": "queued"}
            waiting = http.get(f"/api/admin/cycle-requests/{request_id}", headers=bearer(admin)).json()
            assert waiting["status"] == "queued" and waiting["cycle_id"] is None and waiting["requested_by"] == "ada"
            assert http.get("/api/admin/cycle-requests/req-nope", headers=bearer(admin)).status_code == 404
            RegistryRecord(live.store).start_cycle("cyc-on-worker", "api:ada")  # as the worker would
            assert http.get("/api/admin/cycles", headers=bearer(admin)).json()["running"] == "cyc-on-worker"
            busy = http.post("/api/admin/cycles", headers=bearer(admin))
            assert busy.status_code == 409 and "cyc-on-worker is running" in busy.json()["error"]["message"]
        assert live.services.cycle.running is None and live.app.state.scheduler is None
        audited = live.store.read("SELECT actor, target FROM audit_log WHERE action = 'cycle.request'")
        assert audited == [{"actor": "ada", "target": request_id}]


def test_a_request_waits_for_no_running_cycle(postgres_url):
    with PgStore(postgres_url) as store:
        RegistryRecord(store).start_cycle("cyc-1", "schedule")
        with pytest.raises(ConflictError, match="cycle cyc-1 is running"):
            CycleRequests(store).ask("ada", "api:ada")
        store.write(lambda conn: conn.execute("UPDATE cycles SET status = 'kept' WHERE id = 'cyc-1'"))
        request = CycleRequests(store).ask("ada", "api:ada")
        assert CycleRequests(store).oldest_waiting()["id"] == request["id"]
        CycleRequests(store).started(request["id"], "cyc-2")
        assert CycleRequests(store).get(request["id"])["status"] == "started"
        assert CycleRequests(store).oldest_waiting() is None


def test_rate_limits_hold_across_replicas(postgres_url):
    with PgStore(postgres_url) as first, PgStore(postgres_url) as second:  # two replicas' stores
        limiters = [SharedRateLimiter(first, {"chat": 3}), SharedRateLimiter(second, {"chat": 3})]
        limiters[0].check("chat", "pat")
        limiters[1].check("chat", "pat")
        limiters[0].check("chat", "pat")
        with pytest.raises(RateLimitedError, match="at most 3 a minute"):
            limiters[1].check("chat", "pat")
        limiters[1].check("chat", "sam")  # per user
        limiters[1].check("feedback", "pat")  # no limit set for it


def test_an_external_worker_needs_the_shared_record(tmp_path):
    from deploy.settings import Settings

    with pytest.raises(ValidationError, match="CARECYCLE_WORKER=external needs CARECYCLE_DATABASE_URL"):
        Settings(data_dir=tmp_path, worker="external")


def test_a_snapshot_from_postgresql_has_the_files_types_and_rows_of_one_from_duckdb(tmp_path, postgres_url):
    import pyarrow.parquet as pq

    from feedback.chat_record import Answer, ChatRecord
    from feedback.judgment_record import JudgmentRecord, JudgmentRow
    from feedback.store import Store
    from retrain.datasets.snapshot import write_snapshot

    async def exchange(store) -> None:
        chats = ChatRecord(store)
        turn = await chats.start_turn("u1", None, 'Is 100% of the "dose", safe?\nSay so.')
        prompt = [{"role": "user", "content": 'Is 100% of the "dose", safe?\nSay so.'}]
        message_id = await chats.add_answer(turn, Answer("", "complete", "m", None, 5, 4, 12.5, prompt=prompt))
        await chats.vote("u1", message_id, "down", "", None)  # an empty reason stays empty, a missing comment NULL
        await JudgmentRecord(store).add(JudgmentRow(message_id, "self", "1", "Caution", 2, 0.9, 0.5, False, False, "{}"))

    snapshots = {}
    with Store(tmp_path / "rec.duckdb") as duck, PgStore(postgres_url) as pg:
        for name, store in (("duckdb", duck), ("postgresql", pg)):
            asyncio.run(exchange(store))
            snapshots[name] = write_snapshot(store, tmp_path / name)
    duck_snap, pg_snap = snapshots["duckdb"], snapshots["postgresql"]
    assert pg_snap.row_counts == duck_snap.row_counts and pg_snap.schema_version == duck_snap.schema_version
    assert pg_snap.row_counts["messages"] == 2 and pg_snap.row_counts["judgments"] == 1
    assert not list(pg_snap.path.glob(".*"))  # the CSV dumps are gone
    for table in duck_snap.row_counts:
        duck_table, pg_table = (pq.read_table(s.path / f"{table}.parquet") for s in (duck_snap, pg_snap))
        assert pg_table.schema.names == duck_table.schema.names, table
        assert [str(t) for t in pg_table.schema.types] == [str(t) for t in duck_table.schema.types], table
    for table, columns in {"messages": ["role", "content", "adapter_version"], "feedback": ["rating", "reason", "comment"],
                           "judgments": ["label", "harm_level", "score"], "served_prompts": ["messages"]}.items():
        rows = [sorted(pq.read_table(s.path / f"{table}.parquet").select(columns).to_pylist(), key=str)
                for s in (duck_snap, pg_snap)]
        assert rows[1] == rows[0], table
    assert rows[0] == [{"messages": '[{"content":"Is 100% of the \\"dose\\", safe?\\nSay so.","role":"user"}]'}]
