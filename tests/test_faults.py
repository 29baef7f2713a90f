"""The fault suite: what a crash, a full disk, an old record, a broken cycle step or a bad schedule
does to the service. Real processes, real DuckDB files, real HTTP on 127.0.0.1, the tiny model;
every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import httpx
import pytest

import feedback.store
from feedback.errors import StoreError
from feedback.store import Store, migration_files
from serve.judges.base import Judge
from tests.conftest import free_port, start_server, wait_for
from tests.test_chat_api import bearer
from tests.test_cycle import IDEAL, ChangeJudge, accounts, cycle_settings, seed_traffic, wait_cycle  # noqa: F401

pytestmark = pytest.mark.slow

CARECYCLE = str(Path(sys.executable).with_name("carecycle"))
OLD_RECORDS = Path(__file__).parent / "data"


# -- kill -9 under load -----------------------------------------------------------------------
CLIENTS = 50
USERS = 5


class ServeProcess:
    """`carecycle serve` as a child process in its own process group, logging to a file."""

    def __init__(self, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen([CARECYCLE, "serve", "--port", str(self.port)], env=env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout: float = 180) -> None:
        def healthy():
            assert self.process.poll() is None, f"carecycle serve exited: {self.log_tail()}"
            try:
                return httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, timeout, what="carecycle serve to answer /healthz")

    def kill_group(self) -> None:
        """SIGKILL to the server (the kill -9), then to whatever it started (a training child)."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(f"carecycle serve did not stop on SIGTERM: {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def serve_env(data_dir: Path, model_dir: Path) -> dict[str, str]:
    settings = {
        "DATA_DIR": data_dir, "MODEL": model_dir, "UI": "false", "JUDGES": "", "RATE_LIMIT_CHAT": 0,
        "RATE_LIMIT_FEEDBACK": 0, "MAX_TOKENS": 8, "MAX_TOKENS_LIMIT": 64, "TEMPERATURE": 0,
        "TORCH_THREADS": 1, "CYCLE_ENABLED": "false", "CYCLE_MIN_SIGNAL": 1, "CYCLE_METHODS": "kto",
        "CYCLE_SAMPLE_CAP": 0,
        # a training run that outlives the test: the cycle is still running when the server is killed
        "CYCLE_TRAIN": json.dumps({"max_steps": 100_000, "per_device_train_batch_size": 2, "lora_r": 4,
                                   "torch_threads": 1}),
    }
    return {**os.environ, "OMP_NUM_THREADS": "1", **{f"CARECYCLE_{k}": str(v) for k, v in settings.items()}}


class Load:
    """What the clients sent and what the server acknowledged (a 200 with its whole body)."""

    def __init__(self):
        self.answers: set[str] = set()  # non-streamed answers, and streamed ones that reached [DONE]
        self.conversations: set[str] = set()  # user turns a stream announced (stored before its first chunk)
        self.votes: set[tuple[str, str, str]] = set()  # (message id, user, rating)
        self.streams_open = 0
        self.stop = asyncio.Event()

    async def client(self, http: httpx.AsyncClient, number: int, user: str, key: str) -> None:
        turn = 0
        while not self.stop.is_set():
            turn += 1
            body = {"messages": [{"role": "user", "content": f"client {number} asks about a fever dose, turn {turn}"}]}
            if turn % 3 == 0:
                answer = await self._stream(http, key, {**body, "stream": True, "max_tokens": 48})
            else:
                response = await http.post("/v1/chat/completions", headers=bearer(key), json=body)
                answer = response.json()["id"] if response.status_code == 200 else None
                if answer:
                    self.answers.add(answer)
            if answer:
                rating = ("up", "down")[(number + turn) % 2]
                voted = await http.post("/api/feedback", headers=bearer(key),
                                        json={"message_id": answer, "rating": rating})
                if voted.status_code == 200 and voted.json()["message_id"] == answer:
                    self.votes.add((answer, user, rating))

    async def _stream(self, http: httpx.AsyncClient, key: str, body: dict) -> str | None:
        answer = None
        async with http.stream("POST", "/v1/chat/completions", headers=bearer(key), json=body) as response:
            if response.status_code != 200:
                return None
            self.streams_open += 1
            try:
                async for line in response.aiter_lines():
                    if line == "data: [DONE]":
                        self.answers.add(answer)
                        return answer
                    if line.startswith("data: ") and answer is None:
                        first = json.loads(line[len("data: "):])
                        answer = first["id"]
                        self.conversations.add(first["conversation_id"])
            finally:
                self.streams_open -= 1
        return None


async def _load_then_kill(server: ServeProcess, keys: dict[str, str], admin: str, load: Load) -> str:
    """50 clients chat and vote; a cycle starts; SIGKILL lands while streams are open. Returns the cycle id."""
    limits = httpx.Limits(max_connections=CLIENTS + 10)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
        clients = [asyncio.create_task(load.client(http, n, user, key))
                   for n, (user, key) in enumerate(list(keys.items()) * (CLIENTS // USERS))]
        deadline = time.monotonic() + 240
        while len(load.votes) < CLIENTS and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        started = await http.post("/api/admin/cycles", headers=bearer(admin))
        assert started.status_code == 202, started.text
        cycle_id = started.json()["cycle_id"]
        while len(load.votes) < 2 * CLIENTS and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        running = (await http.get(f"/api/admin/cycles/{cycle_id}", headers=bearer(admin))).json()
        assert running["status"] == "running", running
        while load.streams_open == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        assert load.streams_open > 0, "no stream was open to be cut"
        server.kill_group()
        load.stop.set()
        await asyncio.gather(*clients, return_exceptions=True)  # cut requests fail: they were never acknowledged
    return cycle_id


def test_kill_9_under_load_loses_no_acknowledged_write(tmp_path, tiny_model_dir):
    from feedback.accounts import Accounts

    data = tmp_path / "data"
    with Store(data / "carecycle.duckdb") as store:
        made = Accounts(store)
        keys = {f"load{i}": made.create("test", f"load{i}", "user") for i in range(USERS)}
        admin = made.create("test", "ada", "admin")
    env = serve_env(data, tiny_model_dir)
    server = ServeProcess(env, tmp_path / "serve.log")
    try:
        server.wait_healthy()
        load = Load()
        cycle_id = asyncio.run(_load_then_kill(server, keys, admin, load))
    finally:
        server.kill_group()
    assert len(load.answers) >= 2 * CLIENTS and len(load.votes) >= 2 * CLIENTS and load.conversations

    restarted = ServeProcess(env, tmp_path / "serve.log")  # opens the killed server's file and replays its WAL
    try:
        restarted.wait_healthy()
        cycle = httpx.get(f"{restarted.url}/api/admin/cycles/{cycle_id}", headers=bearer(admin), timeout=30).json()
        assert cycle["status"] == "interrupted" and cycle["finished_at"], cycle
        assert not list((data / "cycles").glob("*/snapshot"))  # no unscrubbed copy outlives the killed cycle
        restarted.stop()
    finally:
        restarted.kill_group()

    with Store(data / "carecycle.duckdb") as store:  # the file opens cleanly, and holds every acknowledged write
        answers = {r["id"] for r in store.read(
            "SELECT id FROM messages WHERE role = 'assistant' AND status = 'complete'")}
        assert load.answers <= answers, f"{len(load.answers - answers)} acknowledged answers lost"
        conversations = {r["conversation_id"] for r in store.read(
            "SELECT DISTINCT conversation_id FROM messages WHERE role = 'user'")}
        assert load.conversations <= conversations, f"{len(load.conversations - conversations)} streamed turns lost"
        votes = {(r["message_id"], r["user_id"], r["rating"]) for r in store.read(
            "SELECT message_id, user_id, rating FROM feedback")}
        assert load.votes <= votes, f"{len(load.votes - votes)} acknowledged votes lost"
        assert store.read("SELECT status FROM cycles WHERE id = ?", [cycle_id]) == [{"status": "interrupted"}]


# -- full disk ----------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 32 MiB tmpfs for the data directory (mounting needs root, as in CI)."""
    if os.geteuid() != 0:
        pytest.skip("the full-disk test mounts a tmpfs, which needs root (CI runs as root)")
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True, timeout=30)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


def fill(folder: Path) -> Path:
    """Write a file until the file system is full; removing it gives the space back."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (1 << 20, 1 << 12, 1 << 9, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == 28, exc  # ENOSPC
    return filler


def test_a_full_disk_refuses_writes_with_503_keeps_serving_and_recovers(small_disk, settings, tiny_engine):
    disk_settings = settings.model_copy(update={"data_dir": small_disk / "data", "rate_limit_chat": 0,
                                                "rate_limit_feedback": 0})
    question = {"messages": [{"role": "user", "content": "a fever dose for an adult?"}]}
    with start_server(disk_settings, tiny_engine) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        key = accounts(live)[1]
        before = http.post("/v1/chat/completions", headers=bearer(key), json=question).json()
        acknowledged = [before["id"]]
        filler = fill(small_disk)

        # the WAL may still have room in its last page for a write or two: the disk is full once one fails
        for attempt in range(200):
            voted = http.post("/api/feedback", headers=bearer(key),
                              json={"message_id": before["id"], "rating": ("up", "down")[attempt % 2]})
            if voted.status_code != 200:
                break
        assert voted.status_code == 503, voted.text
        error = voted.json()["error"]
        assert error["type"] == "store_error" and "No space left on device" in error["message"], error
        accepted = [("up", "down")[i % 2] for i in range(attempt)]  # the votes before the refused one

        assert http.get("/healthz").json()["status"] == "ok"
        assert http.get(f"/api/conversations/{before['conversation_id']}", headers=bearer(key)).status_code == 200
        for stream in (False, True):  # a chat needs its turn stored first: it fails cleanly, before any answer
            refused = http.post("/v1/chat/completions", headers=bearer(key), json={**question, "stream": stream})
            assert refused.status_code == 503 and refused.json()["error"]["type"] == "store_error", refused.text

        filler.unlink()  # space returns: the same server writes again, no restart needed
        after = http.post("/v1/chat/completions", headers=bearer(key), json=question)
        assert after.status_code == 200, after.text
        acknowledged.append(after.json()["id"])
        assert http.post("/api/feedback", headers=bearer(key),
                         json={"message_id": after.json()["id"], "rating": "up"}).status_code == 200

    with Store(disk_settings.record_path) as store:  # reopened: every acknowledged write, none of the refused
        stored = {r["id"] for r in store.read("SELECT id FROM messages WHERE role = 'assistant'")}
        assert set(acknowledged) <= stored
        votes = store.read("SELECT rating FROM feedback WHERE message_id = ? ORDER BY seq", [before["id"]])
        assert [vote["rating"] for vote in votes] == accepted


# -- old schemas ----------------------------------------------------------------------------------
def relations(conn: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, str]]]:
    """Every table and view of the record: its (column, type) list."""
    rows = conn.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = 'main' ORDER BY table_name, ordinal_position").fetchall()
    found: dict[str, list[tuple[str, str]]] = {}
    for table, column, kind in rows:
        found.setdefault(table, []).append((column, kind))
    return found


def contents(conn: duckdb.DuckDBPyConnection, columns_of: dict[str, list[tuple[str, str]]]) -> dict[str, list]:
    """The rows of each relation, in the columns given, sorted."""
    return {name: conn.execute(f"SELECT {', '.join(c for c, _ in columns)} FROM {name} ORDER BY ALL").fetchall()
            for name, columns in columns_of.items()}


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_record_upgrades_with_its_rows_and_views(tmp_path, version):
    from feedback.chat_record import ChatRecord

    original = OLD_RECORDS / f"record_v{version}.duckdb"
    with duckdb.connect(str(original), read_only=True) as old:
        old_schema = relations(old)
        old_rows = contents(old, {n: c for n, c in old_schema.items() if n != "schema_migrations"})
        assert old.execute("SELECT max(version) FROM schema_migrations").fetchone() == (version,)
    assert old_rows["messages"] and old_rows["feedback"] and old_rows["current_feedback"]
    record = tmp_path / "carecycle.duckdb"
    shutil.copy(original, record)
    with Store(tmp_path / "fresh.duckdb") as fresh:
        current_schema = relations(fresh._connection())

    with Store(record) as store:
        conn = store._connection()
        assert store.schema_version() == migration_files()[-1][0]
        assert [r["version"] for r in store.read("SELECT version FROM schema_migrations ORDER BY version")] == [
            v for v, _, _ in migration_files()]
        assert relations(conn) == current_schema  # the same tables, views and columns as a new record
        assert contents(conn, {n: c for n, c in old_schema.items() if n != "schema_migrations"}) == old_rows
        # the upgraded record takes new writes: the vote sequence goes on where it was
        asyncio.run(ChatRecord(store).vote("pat", "msg-a1", "down", None, "changed my mind"))
        assert store.read("SELECT seq, rating FROM current_feedback WHERE message_id = 'msg-a1'") == [
            {"seq": 4, "rating": "down"}]


BROKEN = (3, "003_broken.sql", "ALTER TABLE messages ADD COLUMN scratch INTEGER;\n"
                               "UPDATE conversations SET user_id = 'nobody';\nSELECT * FROM no_such_table;")


def test_a_failing_migration_rolls_back_names_its_file_and_keeps_the_previous_version(tmp_path, monkeypatch):
    record = tmp_path / "carecycle.duckdb"
    shutil.copy(OLD_RECORDS / "record_v1.duckdb", record)
    shipped = migration_files()
    monkeypatch.setattr(feedback.store, "migration_files", lambda *_: [m for m in shipped if m[0] < 3] + [BROKEN])
    with pytest.raises(StoreError, match=r"migration 003_broken\.sql failed .*no_such_table"):
        Store(record).open()

    with duckdb.connect(str(record), read_only=True) as left:  # 002 committed; nothing of 003
        assert left.execute("SELECT max(version) FROM schema_migrations").fetchone() == (2,)
        assert "scratch" not in dict(relations(left)["messages"])
        assert left.execute("SELECT DISTINCT user_id FROM conversations ORDER BY 1").fetchall() == [("pat",), ("sam",)]
    monkeypatch.undo()
    with Store(record) as store:  # the shipped migrations still finish the upgrade
        assert store.schema_version() == shipped[-1][0]


# -- cycle faults -------------------------------------------------------------------------------------
class HeldJudge(Judge):
    """``inner``, but its first call waits until ``release`` is set: the test acts while an
    evaluation is certainly under way."""

    name, version = "held-judge", "test-1"

    def __init__(self, inner: Judge):
        self.inner = inner
        self.called = threading.Event()
        self.release = threading.Event()

    async def judge(self, conversation, answer):
        self.called.set()
        while not self.release.is_set():
            await asyncio.sleep(0.05)
        return await self.inner.judge(conversation, answer)


def training_child(method: str):
    """The pid of a running `retrain.training.train` child of this process training ``method``."""
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"retrain.training.train" in argv:
            config = json.loads(Path(argv[argv.index(b"--config") + 1].decode()).read_text())
            if config["method"] == method:
                return int(entry.name)
    return None


def run_in_loop(live, coroutine_fn):
    async def call():
        return coroutine_fn()

    return asyncio.run_coroutine_threadsafe(call(), live.server_loop).result(60)


def chat_adapter(http, key) -> str | None:
    answer = http.post("/v1/chat/completions", headers=bearer(key),
                       json={"messages": [{"role": "user", "content": "is a fever of 38 dangerous?"}]})
    assert answer.status_code == 200, answer.text
    return answer.json()["adapter_version"]


def new_signal(http, key) -> None:
    """A vote: the signal a cycle needs before it trains again."""
    answer = http.post("/v1/chat/completions", headers=bearer(key),
                       json={"messages": [{"role": "user", "content": "more about the dose, please"}]}).json()
    voted = http.post("/api/feedback", headers=bearer(key), json={"message_id": answer["id"], "rating": "down"})
    assert voted.status_code == 200, voted.text


def evaluating(live, held: HeldJudge, cycle_id: str) -> None:
    """Wait until ``cycle_id``'s evaluation calls the held judge (or the cycle ended before it)."""
    wait_for(lambda: held.called.is_set() or live.services.cycle.running != cycle_id, 300,
             what=f"cycle {cycle_id} to evaluate")
    assert held.called.is_set(), live.services.cycle.registry.cycle(cycle_id)


def test_cycle_faults_leave_the_active_adapter_serving_and_the_next_cycle_runs(cycle_settings, tiny_model_dir):
    from serve.judges.base import create_judge
    from serve.local_engine import LocalEngine

    faulty = cycle_settings.model_copy(update={"cycle_sample_cap": 0})  # the judge is asked by evaluations only
    engine = LocalEngine(str(tiny_model_dir), model_id="tiny")
    with start_server(faulty, engine) as live, httpx.Client(base_url=live.url, timeout=120) as http:
        admin, user = accounts(live)
        seed_traffic(http, admin, user)
        cycle = live.services.cycle

        # 1. the judge is down (nothing listens on its port) and the KTO training child is killed
        cycle._judge = create_judge("external", url=f"http://127.0.0.1:{free_port()}/v1", model="judge",
                                    timeout_s=2, retries=0)
        first = run_in_loop(live, lambda: cycle.trigger("test", "ada", ("kto", "dpo")))
        os.kill(wait_for(lambda: training_child("kto"), 300, what="the KTO training child"), signal.SIGKILL)
        record = wait_cycle(http, admin, first)
        train = record["detail"]["train"]
        assert train["kto"]["status"] == "failed" and "SIGKILL" in train["kto"]["reason"], train
        assert train["dpo"]["status"] == "ok", train  # the other method still trains
        outcome = record["detail"]["outcome"]
        assert record["status"] == "failed" and outcome["failed_step"] == "evaluate", outcome
        assert "127.0.0.1" in outcome["error"], outcome  # the judge that is down, by its address
        assert engine.active_adapter is None and chat_adapter(http, user) is None

        # 2. evaluation interrupted: the server stops while the first evaluation waits on its judge
        held = HeldJudge(ChangeJudge(IDEAL))
        cycle._judge = held
        new_signal(http, user)
        second = run_in_loop(live, lambda: cycle.trigger("test", "ada", ("kto",)))
        evaluating(live, held, second)

    fresh = LocalEngine(str(tiny_model_dir), model_id="tiny")  # a restart: the same record, a new engine
    with start_server(faulty, fresh) as live, httpx.Client(base_url=live.url, timeout=120) as http:
        record = live.services.cycle.registry.cycle(second)
        assert (record["status"], record["step"]) == ("interrupted", "evaluate"), record
        assert fresh.active_adapter is None and chat_adapter(http, user) is None

        # 3. a corrupt candidate: its weights are damaged after training, before it is evaluated
        cycle = live.services.cycle
        held = HeldJudge(ChangeJudge(IDEAL))
        cycle._judge = held
        new_signal(http, user)
        third = run_in_loop(live, lambda: cycle.trigger("test", "ada", ("kto",)))
        evaluating(live, held, third)
        candidate = cycle.registry.adapter(f"kto-{third.removeprefix('cyc-')}")
        weights = Path(candidate["path"]) / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        held.release.set()
        record = wait_cycle(http, admin, third)
        assert record["status"] == "failed" and record["detail"]["outcome"]["failed_step"] == "evaluate", record
        assert candidate["version"] in record["detail"]["outcome"]["error"], record["detail"]["outcome"]
        assert fresh.active_adapter is None and chat_adapter(http, user) is None
        assert live.store.read("SELECT count(*) AS n FROM adapters WHERE status = 'active'") == [{"n": 0}]

        # 4. the next cycle runs through to the gate's decision
        cycle._judge = ChangeJudge(IDEAL)
        new_signal(http, user)
        fourth = run_in_loop(live, lambda: cycle.trigger("test", "ada", ("kto",)))
        record = wait_cycle(http, admin, fourth)
        assert record["status"] in ("promoted", "kept") and "gate" in record["detail"], record
        assert chat_adapter(http, user) == fresh.active_adapter


# -- scheduler --------------------------------------------------------------------------------------
ZONE = "Asia/Kathmandu"  # UTC+05:45: neither UTC nor a whole-hour offset


def test_the_nightly_job_fires_at_its_time_in_its_zone(cycle_settings, tiny_engine):
    due = (datetime.now(ZoneInfo(ZONE)) + timedelta(seconds=8)).replace(microsecond=0)
    nightly = cycle_settings.model_copy(update={
        "cycle_enabled": True, "cycle_time": due.strftime("%H:%M:%S"), "cycle_timezone": ZONE,
        "cycle_min_signal": 1000})  # the cycle it starts ends at once: not enough signal
    with start_server(nightly, tiny_engine) as live:
        from deploy.scheduler import JOB_ID

        assert live.app.state.scheduler.get_job(JOB_ID).next_run_time == due
        fired = wait_for(lambda: live.store.read(
            "SELECT trigger, status, started_at FROM cycles WHERE status <> 'running'"), 60, what="the scheduled cycle")
    assert [(row["trigger"], row["status"]) for row in fired] == [("schedule", "kept")]
    assert due <= fired[0]["started_at"] < due + timedelta(seconds=30)


@pytest.mark.parametrize("variable, value", [("CARECYCLE_CYCLE_TIME", "25:61"),
                                             ("CARECYCLE_CYCLE_TIMEZONE", "Mars/Olympus_Mons")])
def test_an_invalid_schedule_fails_at_start_with_one_line(tmp_path, tiny_model_dir, variable, value):
    env = {**os.environ, "CARECYCLE_DATA_DIR": str(tmp_path), "CARECYCLE_MODEL": str(tiny_model_dir),
           "CARECYCLE_UI": "false", "CARECYCLE_JUDGES": "", variable: value}
    result = subprocess.run([CARECYCLE, "serve", "--port", str(free_port())], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and value in lines[0], result.stderr
    assert not (tmp_path / "carecycle.duckdb").exists()  # refused before anything was opened
