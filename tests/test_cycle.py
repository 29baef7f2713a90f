"""The realignment cycle through the running app, on the tiny model: record → datasets →
KTO and DPO candidates → evaluation → gate → promotion → rollback → restart."""

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from retrain.evaluation.benchmark import load_benchmark
from serve.cares import Label
from serve.judges.base import Judge, Judgment
from tests.conftest import start_server, wait_for
from tests.test_chat_api import bearer

# the tests that start a server run on DuckDB, then PostgreSQL (tests/conftest.py)
pytestmark = pytest.mark.both_backends

TRAIN = {"max_steps": 4, "learning_rate": 5e-2, "per_device_train_batch_size": 2, "lora_r": 4, "lora_alpha": 8,
         "max_length": 1024, "torch_threads": 1}
EVAL_ITEMS = 16  # 4 harmless, 12 harmful: enough for the paired test at α = 0.05


class ChangeJudge(Judge):
    """Stands in for a real judge, deterministically: the first answer it sees to a benchmark
    prompt (the active adapter's, evaluated first) is Accept; an answer that differs from it
    (a candidate changed the model) gets the label ``changed_label(harm)``. It knows each
    prompt's harm level from the benchmark."""

    name, version = "change-judge", "test-1"

    def __init__(self, changed_label):
        self.changed_label = changed_label
        self.first_answer: dict[str, str] = {}
        self.harm = {item.prompt: item.harmful_level for item in load_benchmark("carecycle-safety", split="validation")}

    async def judge(self, conversation, answer):
        prompt = conversation[-1]["content"]
        harm = self.harm.get(prompt, 0)
        first = self.first_answer.setdefault(prompt, answer)
        label = Label.ACCEPT if answer == first else self.changed_label(harm)
        return Judgment(self.name, self.version, label, harm)


IDEAL = lambda harm: Label.ACCEPT if harm == 0 else Label.REFUSE  # noqa: E731
REFUSE_ALL = lambda harm: Label.REFUSE  # noqa: E731


@pytest.fixture
def cycle_settings(settings):
    return settings.model_copy(update={
        "cycle_enabled": False, "cycle_min_signal": 1, "cycle_eval_limit": EVAL_ITEMS, "cycle_eval_max_tokens": 8,
        "cycle_train": TRAIN, "cycle_sample_cap": 2, "rate_limit_chat": 0, "rate_limit_feedback": 0,
        "max_tokens": 8,
    })


def seed_traffic(http, admin_key, user_key):
    """Chats with thumbs up and down, a regeneration, an operator correction."""
    answers = []
    for i in range(8):
        body = http.post("/v1/chat/completions", headers=bearer(user_key),
                         json={"messages": [{"role": "user", "content": f"question {i} about a fever dose"}]}).json()
        answers.append(body["id"])
        http.post("/api/feedback", headers=bearer(user_key),
                  json={"message_id": body["id"], "rating": "up" if i % 2 else "down"})
    sibling = http.post("/v1/chat/completions", headers=bearer(user_key), json={
        "messages": [{"role": "user", "content": "question 0 about a fever dose"}],
        "metadata": {"regenerate": answers[0]}, "temperature": 1.0, "seed": 3}).json()["id"]
    http.post("/api/feedback", headers=bearer(user_key), json={"message_id": sibling, "rating": "up"})
    http.post(f"/api/review/items/{answers[2]}/verdict", headers=bearer(admin_key),
              json={"label": "Accept", "harm_level": 3, "corrected_answer": "I can't help with that; please see a doctor."})
    return answers


def wait_cycle(http, admin_key, cycle_id, timeout=600):
    def finished():
        record = http.get(f"/api/admin/cycles/{cycle_id}", headers=bearer(admin_key)).json()
        return record if record["status"] != "running" else None

    return wait_for(finished, timeout, what=f"cycle {cycle_id} to finish")


def accounts(live):
    from feedback.accounts import Accounts

    made = Accounts(live.store)
    return made.create("t", "ada", "admin"), made.create("t", "pat", "user")


def test_full_cycle_promotes_then_rolls_back_and_restores_on_restart(cycle_settings, tiny_model_dir):
    from serve.local_engine import LocalEngine

    engine = LocalEngine(str(tiny_model_dir), model_id="tiny")  # its own: adapters change it
    with start_server(cycle_settings, engine) as live:
        live.services.cycle._judge = ChangeJudge(IDEAL)
        admin, user = accounts(live)
        with httpx.Client(base_url=live.url, timeout=120) as http:
            seed_traffic(http, admin, user)
            started = http.post("/api/admin/cycles", headers=bearer(admin))
            assert started.status_code == 202
            cycle_id = started.json()["cycle_id"]
            second = http.post("/api/admin/cycles", headers=bearer(admin))
            assert second.status_code == 409 and cycle_id in second.json()["error"]["message"]
            record = wait_cycle(http, admin, cycle_id)
            assert record["status"] == "promoted", json.dumps(record["detail"], indent=1)[:6000]
            detail = record["detail"]
            assert detail["datasets"]["kto"]["rows"] >= 8 and detail["datasets"]["dpo"]["by_source"]["correction"] == 1
            assert detail["datasets"]["dpo"]["by_source"]["sibling"] >= 1
            assert {v["status"] for v in detail["train"].values()} == {"ok"}
            assert set(detail["evaluate"]) == {"active", *[f"{m}-{cycle_id.removeprefix('cyc-')}" for m in ("kto", "dpo")]}
            winner = detail["gate"]["winner"]
            assert detail["gate"]["promote"] and detail["outcome"]["winner_method"] in ("kto", "dpo")
            evidence = detail["gate"]["comparisons"][winner]  # the paired test's figures, in the record
            assert evidence["n"] == EVAL_ITEMS and evidence["p_value"] <= detail["gate"]["alpha"] == 0.05
            assert 0 < evidence["interval"]["low"] <= evidence["mean_difference"] <= evidence["interval"]["high"]
            assert evidence["detection"]["after"] > evidence["detection"]["before"] == 0.0
            assert evidence["erroneous_refusal"] == {"before": 0.0, "after": 0.0, "rise_upper": 0.0, "items": 4}
            assert detail["outcome"]["reason"].startswith(f"{winner} is safer")

            # new answers name the promoted adapter
            after = http.post("/v1/chat/completions", headers=bearer(user),
                              json={"messages": [{"role": "user", "content": "hello"}]}).json()
            assert after["adapter_version"] == winner
            assert live.store.read("SELECT adapter_version FROM messages WHERE id = ?", [after["id"]]) == [
                {"adapter_version": winner}]
            adapters = {a["version"]: a for a in http.get("/api/admin/adapters", headers=bearer(admin)).json()["data"]}
            assert adapters[winner]["status"] == "active" and adapters[winner]["snapshot_id"]
            assert json.loads(adapters[winner]["metrics"])["gate"]["p_value"] == evidence["p_value"]
            assert sum(a["status"] == "rejected" for a in adapters.values()) == 1
            provenance = live.store.read("SELECT count(*) AS n FROM adapter_provenance WHERE adapter_version = ?", [winner])
            assert provenance[0]["n"] > 0

            # chats keep succeeding while the adapter is switched back and forth under them
            def ask(i):
                return http.post("/v1/chat/completions", headers=bearer(user),
                                 json={"messages": [{"role": "user", "content": f"load {i}"}]})

            with ThreadPoolExecutor(max_workers=6) as pool:
                in_flight = [pool.submit(ask, i) for i in range(12)]
                assert http.post("/api/admin/adapters/rollback", headers=bearer(admin)).status_code == 200
                assert http.post(f"/api/admin/adapters/{winner}/promote", headers=bearer(admin)).status_code == 200
                responses = [future.result() for future in in_flight]
            assert [r.status_code for r in responses] == [200] * 12
            assert {r.json()["adapter_version"] for r in responses} <= {winner, None}

            # rollback: back to the base model, instantly
            assert http.post("/api/admin/adapters/rollback", headers=bearer(admin)).json()["active"] is None
            back = http.post("/v1/chat/completions", headers=bearer(user),
                             json={"messages": [{"role": "user", "content": "hello"}]}).json()
            assert back.get("adapter_version", back) is None
            second_rollback = http.post("/api/admin/adapters/rollback", headers=bearer(admin))
            assert second_rollback.status_code == 409  # the rolled-back winner is retired, never brought back by it
            assert "no previous version" in second_rollback.json()["error"]["message"]
            rejected = next(v for v, a in adapters.items() if a["status"] == "rejected")
            assert http.post(f"/api/admin/adapters/{rejected}/promote", headers=bearer(admin)).status_code == 409
            assert http.post("/api/admin/adapters/nope/promote", headers=bearer(admin)).status_code == 404
            actions = [r["action"] for r in http.get("/api/admin/audit", headers=bearer(admin)).json()["data"]]
            assert {"adapter.promote", "adapter.rollback", "cycle.trigger"} <= set(actions)

            assert http.post(f"/api/admin/adapters/{winner}/promote", headers=bearer(admin)).status_code == 200

    # a restart serves the registry's active adapter again
    fresh = LocalEngine(str(tiny_model_dir), model_id="tiny")
    with start_server(cycle_settings, fresh) as live:
        assert fresh.active_adapter == winner
        assert live.store.read("SELECT version FROM adapters WHERE status = 'active'") == [{"version": winner}]


def test_gate_refuses_a_candidate_that_refuses_everything(cycle_settings, tiny_model_dir):
    from serve.local_engine import LocalEngine

    engine = LocalEngine(str(tiny_model_dir), model_id="tiny")
    with start_server(cycle_settings.model_copy(update={"cycle_methods": "kto"}), engine) as live:
        live.services.cycle._judge = ChangeJudge(REFUSE_ALL)
        admin, user = accounts(live)
        with httpx.Client(base_url=live.url, timeout=120) as http:
            seed_traffic(http, admin, user)
            record = wait_cycle(http, admin, http.post("/api/admin/cycles", headers=bearer(admin)).json()["cycle_id"])
        assert record["status"] == "kept"
        gate = record["detail"]["gate"]
        assert "erroneous refusal may rise: 0.000 → 1.000 on 4 harmless items" in gate["reason"]
        assert record["detail"]["outcome"]["reason"] == gate["reason"]
        assert engine.active_adapter is None
        assert live.store.read("SELECT status FROM adapters") == [{"status": "rejected"}]


def test_not_enough_signal_keeps_the_active_adapter(cycle_settings, tiny_engine):
    with start_server(cycle_settings.model_copy(update={"cycle_min_signal": 1000}), tiny_engine) as live:
        record = asyncio.run_coroutine_threadsafe(live.services.cycle.run("test"), live.server_loop).result(60)
    assert record["status"] == "kept" and "not enough new signal" in record["detail"]["outcome"]["reason"]


def test_a_failing_step_is_recorded_and_serving_goes_on(cycle_settings, tiny_engine):
    broken = cycle_settings.model_copy(update={"cycle_benchmark": "/nonexistent/benchmark.parquet"})
    with start_server(broken, tiny_engine) as live:
        live.services.cycle._judge = ChangeJudge(IDEAL)
        admin, user = accounts(live)
        with httpx.Client(base_url=live.url, timeout=120) as http:
            seed_traffic(http, admin, user)
            record = wait_cycle(http, admin, http.post("/api/admin/cycles", headers=bearer(admin)).json()["cycle_id"])
            assert record["status"] == "failed" and record["detail"]["outcome"]["failed_step"] == "evaluate"
            assert "benchmark" in record["detail"]["outcome"]["error"]
            assert http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}).status_code == 200
        # the candidates it trained never passed a gate: none is left waiting as a candidate
        trained = live.store.read("SELECT method, status FROM adapters ORDER BY method")
        assert trained == [{"method": "dpo", "status": "rejected"}, {"method": "kto", "status": "rejected"}]


def test_an_interrupted_cycle_is_marked_on_restart(cycle_settings, tiny_engine):
    from deploy.record import record_store
    from feedback.registry_record import RegistryRecord, candidate_version

    with record_store(cycle_settings) as store:
        registry = RegistryRecord(store)
        registry.start_cycle("cyc-killed", "schedule")
        for cycle_id in ("cyc-killed", "cyc-other"):  # a candidate of the killed cycle, one of another
            registry.register(candidate_version("kto", cycle_id), None, "kto", "/nowhere", "0", "base", "snap", [])
    killed = cycle_settings.data_dir / "cycles" / "cyc-killed"
    (killed / "snapshot").mkdir(parents=True)  # what the killed cycle left: unscrubbed transcripts
    (killed / "snapshot" / "messages.parquet").write_bytes(b"transcripts")
    (killed / "kto.parquet").write_bytes(b"scrubbed dataset")
    with start_server(cycle_settings, tiny_engine) as live:
        assert live.store.read("SELECT status FROM cycles WHERE id = 'cyc-killed'") == [{"status": "interrupted"}]
        assert not (killed / "snapshot").exists() and (killed / "kto.parquet").read_bytes() == b"scrubbed dataset"
        assert live.store.read("SELECT version, status FROM adapters ORDER BY version") == [
            {"version": "kto-killed", "status": "rejected"}, {"version": "kto-other", "status": "candidate"}]


def test_the_schedule_registers_one_nightly_job_in_its_time_zone(cycle_settings, tiny_engine):
    from deploy.scheduler import JOB_ID

    nightly = cycle_settings.model_copy(update={"cycle_enabled": True, "cycle_time": "03:15",
                                                "cycle_timezone": "Europe/Berlin"})
    with start_server(nightly, tiny_engine) as live:
        job = live.app.state.scheduler.get_job(JOB_ID)
        assert len(live.app.state.scheduler.get_jobs()) == 1
        assert (job.next_run_time.hour, job.next_run_time.minute) == (3, 15)
        assert str(job.next_run_time.tzinfo) == "Europe/Berlin"
        assert job.max_instances == 1  # never two at once, also from the schedule


def test_a_scheduled_run_during_a_manual_cycle_is_skipped_not_queued(cycle_settings, tiny_engine):
    from deploy.scheduler import scheduled_cycle

    with start_server(cycle_settings.model_copy(update={"cycle_min_signal": 1000}), tiny_engine) as live:
        cycle = live.services.cycle
        cycle.running = "cyc-manual"  # a cycle triggered by hand is under way
        asyncio.run_coroutine_threadsafe(scheduled_cycle(cycle), live.server_loop).result(30)
        assert live.store.read("SELECT count(*) AS n FROM cycles") == [{"n": 0}]
        cycle.running = None
        asyncio.run_coroutine_threadsafe(scheduled_cycle(cycle), live.server_loop).result(30)
        assert live.store.read("SELECT trigger, status FROM cycles") == [{"trigger": "schedule", "status": "kept"}]


def test_promotion_can_wait_for_an_admins_approval(cycle_settings, tiny_model_dir):
    from serve.local_engine import LocalEngine

    engine = LocalEngine(str(tiny_model_dir), model_id="tiny")
    waiting = cycle_settings.model_copy(update={"cycle_require_approval": True, "cycle_methods": "kto"})
    with start_server(waiting, engine) as live:
        live.services.cycle._judge = ChangeJudge(IDEAL)
        admin, user = accounts(live)
        with httpx.Client(base_url=live.url, timeout=120) as http:
            seed_traffic(http, admin, user)
            cycle_id = http.post("/api/admin/cycles", headers=bearer(admin)).json()["cycle_id"]
            record = wait_cycle(http, admin, cycle_id)
            assert record["status"] == "awaiting_approval" and engine.active_adapter is None
            decided = http.post(f"/api/admin/cycles/{cycle_id}/decision", headers=bearer(admin), json={"approve": True})
            assert decided.status_code == 200 and decided.json()["status"] == "promoted"
            assert engine.active_adapter == record["detail"]["gate"]["winner"]
            again = http.post(f"/api/admin/cycles/{cycle_id}/decision", headers=bearer(admin), json={"approve": True})
            assert again.status_code == 409
        approvals = live.store.read("SELECT actor, target FROM audit_log WHERE action = 'cycle.approve'")
        assert approvals == [{"actor": "ada", "target": cycle_id}]
