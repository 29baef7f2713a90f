"""Run one training in a child process, so a crash, a kill or a hang never touches the caller.

    result = run_training(config, on_progress=print, timeout_s=3600)
    result.status  # "ok" (result.adapter_path, result.manifest) | "skipped" | "failed" (result.reason)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrain.training.adapter_folder import partial_path, verify_adapter
from retrain.training.config import TrainConfig
from retrain.training.errors import AdapterIntegrityError
from retrain.training.events import parse_event

OnProgress = Callable[[dict[str, Any]], None]
STDERR_TAIL_CHARS = 4000
SKIPPED_EXIT = 3  # train.EXIT_SKIPPED, not imported: the runner never loads the training module
STOP_GRACE_S = 10.0  # a stopped child gets SIGTERM, then SIGKILL after this long

# the training children of this process, so that a shutdown can end them (see stop_all_training)
_children_lock = threading.Lock()
_running: set[subprocess.Popen] = set()
_stopped: set[int] = set()  # pids that stop_all_training ended


@dataclass
class TrainingResult:
    status: str  # "ok" | "failed" | "skipped"
    reason: str | None = None
    adapter_path: Path | None = None
    manifest: dict[str, Any] | None = None
    stderr_tail: str = ""
    returncode: int | None = None
    last_progress: dict[str, Any] | None = field(default=None, repr=False)


def run_training(
    config: TrainConfig, on_progress: OnProgress | None = None, timeout_s: float | None = None,
    progress_bar: bool = False,
) -> TrainingResult:
    """Train in `python -m retrain.training.train`; `on_progress` gets every event dict (see `events`).

    `timeout_s` kills the child when exceeded; `progress_bar` draws a tqdm bar on stderr (for a CLI).
    A run that does not end "ok" leaves no folder at `config.output_dir`.
    """
    with tempfile.TemporaryDirectory(prefix="carecycle-train-") as tmp, _bar(progress_bar, on_progress) as handler:
        config_path = config.to_json(Path(tmp) / "config.json")
        with open(Path(tmp) / "stderr.log", "w+b") as stderr:
            child = subprocess.Popen(
                [sys.executable, "-m", "retrain.training.train", "--config", str(config_path)],
                stdout=subprocess.PIPE, stderr=stderr, text=True, env=_child_env(config),
            )
            with _children_lock:
                _running.add(child)
            try:
                events, timed_out = _follow(child, handler, timeout_s)
            finally:
                with _children_lock:
                    _running.discard(child)
                    stopped = child.pid in _stopped
                    _stopped.discard(child.pid)
            stderr.seek(max(0, os.fstat(stderr.fileno()).st_size - STDERR_TAIL_CHARS))
            tail = stderr.read().decode(errors="replace")
    result = _result(config, child.returncode, events, tail, timeout_s if timed_out else None, stopped)
    if result.status != "ok":
        shutil.rmtree(partial_path(Path(config.output_dir)), ignore_errors=True)
    return result


def stop_all_training(grace_s: float = STOP_GRACE_S) -> int:
    """End every training child of this process (the server is shutting down); their runs end
    "failed", saying so. Returns how many were running."""
    with _children_lock:
        children = list(_running)
        _stopped.update(child.pid for child in children)
    for child in children:
        child.terminate()
    for child in children:
        try:
            child.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            child.kill()
    return len(children)


def _child_env(config: TrainConfig) -> dict[str, str]:
    # a fixed hash seed: peft writes target_modules from a set, so the same run gives the same checksum
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONHASHSEED": "0"}
    if config.torch_threads:
        env["OMP_NUM_THREADS"] = str(config.torch_threads)
    return env


def _follow(child: subprocess.Popen, handler: OnProgress, timeout_s: float | None) -> tuple[dict[str, dict], bool]:
    """Read events until the child ends; the last event of each kind, and whether the timeout killed it."""
    timed_out = threading.Event()
    timer = threading.Timer(timeout_s, lambda: (timed_out.set(), child.kill())) if timeout_s else None
    last: dict[str, dict] = {}
    try:
        if timer:
            timer.start()
        for line in child.stdout:
            event = parse_event(line)
            if event:
                last[event["event"]] = event
                handler(event)
        child.wait()
    finally:  # also when the handler raised: never leave a training process behind
        if timer:
            timer.cancel()
        if child.poll() is None:
            child.kill()
            child.wait()
    return last, timed_out.is_set()


def _result(
    config: TrainConfig, code: int, events: dict[str, dict], tail: str, timeout_s: float | None, stopped: bool,
) -> TrainingResult:
    common = {"stderr_tail": tail, "returncode": code, "last_progress": events.get("progress")}
    if stopped:
        return TrainingResult("failed", "stopped: the server shut down during training", **common)
    if timeout_s is not None:
        return TrainingResult("failed", f"timed out after {timeout_s} s; the training process was killed", **common)
    if code == SKIPPED_EXIT and "skipped" in events:
        return TrainingResult("skipped", events["skipped"]["reason"], **common)
    if "error" in events:
        return TrainingResult("failed", events["error"]["reason"], **common)
    if code == 0 and "done" in events:
        return _verified(Path(config.output_dir), common)
    if code < 0:
        return TrainingResult("failed", f"the training process was killed by {signal.Signals(-code).name}", **common)
    last_line = next((line for line in reversed(tail.splitlines()) if line.strip()), "no output")
    return TrainingResult("failed", f"the training process exited with code {code}: {last_line}", **common)


def _verified(adapter: Path, common: dict[str, Any]) -> TrainingResult:
    try:
        return TrainingResult("ok", adapter_path=adapter, manifest=verify_adapter(adapter), **common)
    except AdapterIntegrityError as exc:
        return TrainingResult("failed", str(exc), **common)


@contextlib.contextmanager
def _bar(enabled: bool, on_progress: OnProgress | None) -> Iterator[OnProgress]:
    """The event handler: `on_progress`, plus a tqdm bar when enabled."""
    if not enabled:
        yield on_progress or (lambda event: None)
        return
    from tqdm import tqdm

    with tqdm(desc="training", unit="step") as bar:
        def handle(event: dict[str, Any]) -> None:
            if event["event"] == "progress":
                bar.total, bar.n = event["total"], event["step"]
                bar.set_postfix(loss=f"{event['loss']:.4f}")
            if on_progress:
                on_progress(event)

        yield handle
