"""Stopping the server ends a training child that is still running (none is left behind)."""

import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

from tests.conftest import start_server, wait_for


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_shutting_the_server_down_ends_a_running_training(settings, tiny_engine, tiny_model_dir, tmp_path):
    from retrain.training import TrainConfig, run_training

    rows = [{"prompt": [{"role": "user", "content": f"question {i}"}],
             "completion": [{"role": "assistant", "content": "please ask the clinic"}], "label": bool(i % 2)}
            for i in range(6)]
    (tmp_path / "kto.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = TrainConfig(method="kto", base_model=str(tiny_model_dir), dataset=str(tmp_path / "kto.jsonl"),
                         output_dir=str(tmp_path / "adapter"), dataset_snapshot_id="snap-1", max_steps=100_000,
                         per_device_train_batch_size=2, max_length=64, torch_threads=1)
    child, training = {}, threading.Event()

    def follow(event):
        if event["event"] == "start":
            child["pid"] = event["pid"]
        if event["event"] == "progress":
            training.set()

    with ThreadPoolExecutor(1) as pool:
        try:
            with start_server(settings, tiny_engine):  # as a cycle does: the training runs in a thread of the server
                run = pool.submit(run_training, config, follow)
                assert training.wait(180), "the training never started"
            result = run.result(timeout=60)  # the server has stopped: the training has ended too
            assert result.status == "failed" and "the server shut down" in result.reason
            wait_for(lambda: not alive(child["pid"]), timeout=5, what="the training process to end")
            assert list(tmp_path.glob("*adapter*")) == []  # no folder, not even a partial one
        finally:
            if "pid" in child and alive(child["pid"]):
                os.kill(child["pid"], signal.SIGKILL)  # a failed test must not leave it running either
