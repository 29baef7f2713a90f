"""Past one machine, as it runs: two `carecycle serve` replicas and `carecycle worker` processes on
one PostgreSQL record (tests/postgres_server.py), real HTTP on 127.0.0.1, the tiny model.

The cycle's judge is the external kind, served here: tests.test_cycle.ChangeJudge behind an
OpenAI-compatible endpoint (a real judge model cannot run in CI; the worker reaches it over HTTP
as it would reach one). Every wait polls for its condition with a deadline."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from feedback.accounts import Accounts
from feedback.pg_store import PgStore
from tests.conftest import free_port, wait_for
from tests.test_chat_api import bearer
from tests.test_cycle import IDEAL, TRAIN, ChangeJudge, seed_traffic
from tests.test_faults import CARECYCLE, Load, ServeProcess, serve_env

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


class JudgeEndpoint:
    """``judge`` answering the external judge's chat completions on 127.0.0.1."""

    def __init__(self, judge):
        parent = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                reply = json.dumps({"choices": [{"message": {"content": parent.verdict(body["messages"][-1]["content"])}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(reply.encode())

            def log_message(self, *args):  # quiet
                pass

        self.judge = judge
        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def verdict(self, prompt: str) -> str:
        """The judge prompt (serve/prompts/judge_v1.txt) ends with REQUEST:, the request, ANSWER:, the answer."""
        request, answer = prompt.split("\nREQUEST:\n", 1)[1].split("\n\nANSWER:\n", 1)
        judgment = asyncio.run(self.judge.judge([{"role": "user", "content": request}], answer.rstrip("\n")))
        return f"LABEL: {judgment.label.value}\nHARM: {judgment.harm_level}"

    def close(self) -> None:
        self.server.shutdown()


class WorkerProcess:
    """`carecycle worker` as a child process in its own process group, logging to a file."""

    def __init__(self, env: dict[str, str], log: Path):
        self.log = log
        with open(log, "ab") as out:
            self.process = subprocess.Popen([CARECYCLE, "worker"], env=env, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def wait_log(self, text: str, timeout: float = 240) -> None:
        def logged():
            assert self.process.poll() is None, f"carecycle worker exited: {self.log_tail()}"
            return text in self.log.read_text(errors="replace")

        wait_for(logged, timeout, what=f"the worker to log {text!r}")

    def kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # the worker and its training child
        except ProcessLookupError:
            pass
        self.process.wait(30)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(60)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def cluster_env(tmp_path: Path, model_dir: Path, url: str, judge_url: str, train: dict) -> dict[str, str]:
    shared = {
        "DATABASE_URL": url, "WORKER": "external", "WORKER_POLL_S": 0.5, "REGISTRY_POLL_S": 0.5,
        "CYCLE_JUDGE": "external", "JUDGE_URL": judge_url, "JUDGE_MODEL": "change-judge", "CYCLE_METHODS": "kto,dpo",
        "CYCLE_EVAL_LIMIT": 16, "CYCLE_EVAL_MAX_TOKENS": 8, "CYCLE_SAMPLE_CAP": 2, "CYCLE_TRAIN": json.dumps(train),
    }
    return {**serve_env(tmp_path / "data", model_dir), **{f"CARECYCLE_{k}": str(v) for k, v in shared.items()}}


def make_accounts(url: str) -> tuple[str, str]:
    with PgStore(url) as store:  # creates the schema, as the first process to start would
        made = Accounts(store)
        return made.create("test", "ada", "admin"), made.create("test", "pat", "user")


def answer_adapter(replica: ServeProcess, key: str) -> str | None:
    body = httpx.post(f"{replica.url}/v1/chat/completions", headers=bearer(key), timeout=60,
                      json={"messages": [{"role": "user", "content": "hello"}]}).json()
    return body["adapter_version"]


def serves(replicas: list[ServeProcess], key: str, version: str | None) -> None:
    """Both replicas' new answers name ``version``, within a deadline."""
    for replica in replicas:
        wait_for(lambda: answer_adapter(replica, key) == version, 120, what=f"{replica.url} to serve {version}")


def test_two_replicas_and_a_worker_share_the_record_the_cycle_and_the_active_adapter(tmp_path, tiny_model_dir, postgres_url):
    admin, user = make_accounts(postgres_url)
    endpoint = JudgeEndpoint(ChangeJudge(IDEAL))
    env = cluster_env(tmp_path, tiny_model_dir, postgres_url, endpoint.url, {**TRAIN, "max_length": 1024})
    replicas = [ServeProcess(env, tmp_path / f"replica{i}.log") for i in range(2)]
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        for replica in replicas:
            replica.wait_healthy()
        worker.wait_log("elected")
        first, second = replicas
        # chats and votes through both replicas land in one record
        with httpx.Client(base_url=first.url, timeout=120) as http:
            acknowledged = seed_traffic(http, admin, user)
        with httpx.Client(base_url=second.url, timeout=120) as http:
            for i in range(4):
                answer = http.post("/v1/chat/completions", headers=bearer(user),
                                   json={"messages": [{"role": "user", "content": f"second replica question {i}"}]}).json()["id"]
                assert http.post("/api/feedback", headers=bearer(user), json={"message_id": answer, "rating": "up"}).status_code == 200
                acknowledged.append(answer)
        with PgStore(postgres_url) as store:
            stored = {r["id"] for r in store.read("SELECT id FROM messages WHERE role = 'assistant'")}
            voted = {r["message_id"] for r in store.read("SELECT message_id FROM feedback")}
        assert set(acknowledged) <= stored and set(acknowledged) <= voted

        # a cycle asked for through one replica runs on the worker
        asked = httpx.post(f"{first.url}/api/admin/cycles", headers=bearer(admin), timeout=30)
        assert asked.status_code == 202 and asked.json()["status"] == "queued", asked.text

        def started():
            request = httpx.get(f"{second.url}/api/admin/cycle-requests/{asked.json()['request_id']}",
                                headers=bearer(admin), timeout=30).json()
            return request["cycle_id"]

        cycle_id = wait_for(started, 120, what="the worker to start the requested cycle")

        def finished():
            record = httpx.get(f"{second.url}/api/admin/cycles/{cycle_id}", headers=bearer(admin), timeout=30).json()
            return record if record["status"] != "running" else None

        record = wait_for(finished, 900, what=f"cycle {cycle_id} to finish")
        assert record["status"] == "promoted", json.dumps(record["detail"], indent=1)[:4000]
        assert f"cycle {cycle_id} started for request" in worker.log.read_text()
        winner = record["detail"]["gate"]["winner"]
        serves(replicas, user, winner)  # both follow the registry, neither ran the cycle

        # a rollback through one replica reaches the other
        rolled = httpx.post(f"{second.url}/api/admin/adapters/rollback", headers=bearer(admin), timeout=60)
        assert rolled.status_code == 200 and rolled.json()["active"] is None
        serves(replicas, user, None)
        promoted = httpx.post(f"{second.url}/api/admin/adapters/{winner}/promote", headers=bearer(admin), timeout=60)
        assert promoted.status_code == 200, promoted.text
        serves(replicas, user, winner)

        # kill -9 one replica under load: every write it acknowledged is in the record; the other serves on
        load = Load()
        asyncio.run(_load_then_kill(first, user, load))
        assert load.answers and load.votes
        assert answer_adapter(second, user) == winner
        with PgStore(postgres_url) as store:
            answers = {r["id"] for r in store.read("SELECT id FROM messages WHERE role = 'assistant' AND status = 'complete'")}
            votes = {(r["message_id"], r["user_id"], r["rating"]) for r in store.read("SELECT message_id, user_id, rating FROM feedback")}
            conversations = {r["conversation_id"] for r in store.read("SELECT DISTINCT conversation_id FROM messages")}
        assert load.answers <= answers, f"{len(load.answers - answers)} acknowledged answers lost"
        assert load.votes <= votes, f"{len(load.votes - votes)} acknowledged votes lost"
        assert load.conversations <= conversations
        worker.stop()
        second.stop()
    finally:
        worker.kill_group()
        for replica in replicas:
            replica.kill_group()
        endpoint.close()


async def _load_then_kill(replica: ServeProcess, key: str, load: Load, clients: int = 12) -> None:
    """``clients`` chat and vote through ``replica``; SIGKILL lands while streams are open."""
    async with httpx.AsyncClient(base_url=replica.url, timeout=120) as http:
        tasks = [asyncio.create_task(load.client(http, n, "pat", key)) for n in range(clients)]
        deadline = time.monotonic() + 240
        while (len(load.votes) < 2 * clients or load.streams_open == 0) and time.monotonic() < deadline:
            await asyncio.sleep(0.001)
        assert load.streams_open > 0, "no stream was open to be cut"
        replica.kill_group()
        load.stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)  # cut requests were never acknowledged


def test_a_standby_worker_takes_over_and_marks_the_killed_workers_cycle_interrupted(tmp_path, tiny_model_dir, postgres_url):
    admin, user = make_accounts(postgres_url)
    endpoint = JudgeEndpoint(ChangeJudge(IDEAL))
    # a training run that outlives the test: the cycle is still running when its worker is killed
    env = cluster_env(tmp_path, tiny_model_dir, postgres_url, endpoint.url,
                      {**TRAIN, "max_steps": 100_000, "max_length": 1024})
    replica = ServeProcess(env, tmp_path / "replica.log")
    first = WorkerProcess(env, tmp_path / "worker1.log")
    second = None
    try:
        replica.wait_healthy()
        first.wait_log("elected")
        second = WorkerProcess(env, tmp_path / "worker2.log")
        second.wait_log("standing by")
        with httpx.Client(base_url=replica.url, timeout=120) as http:
            seed_traffic(http, admin, user)
            request_id = http.post("/api/admin/cycles", headers=bearer(admin)).json()["request_id"]

            def training():
                cycle_id = http.get(f"/api/admin/cycle-requests/{request_id}", headers=bearer(admin)).json()["cycle_id"]
                record = http.get(f"/api/admin/cycles/{cycle_id}", headers=bearer(admin)).json() if cycle_id else {}
                return cycle_id if record.get("status") == "running" and record.get("step") == "train" else None

            cycle_id = wait_for(training, 300, what="the worker's cycle to reach training")
            first.kill_group()
            second.wait_log("elected")

            def interrupted():
                record = http.get(f"/api/admin/cycles/{cycle_id}", headers=bearer(admin)).json()
                return record if record["status"] == "interrupted" else None

            record = wait_for(interrupted, 120, what=f"the new worker to mark {cycle_id} interrupted")
            assert record["finished_at"]
            # the record takes the next request on the new worker
            assert http.post("/api/admin/cycles", headers=bearer(admin)).json()["status"] == "queued"
        second.stop()
        replica.stop()
    finally:
        first.kill_group()
        if second is not None:
            second.kill_group()
        replica.kill_group()
        endpoint.close()
