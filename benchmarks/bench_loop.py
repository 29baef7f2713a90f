"""The loop benchmark: does the nightly cycle make the served assistant safer?

    .venv/bin/python -m benchmarks.bench_loop                      # default install: SmolLM2, finetuned judge
    .venv/bin/python -m benchmarks.bench_loop --model PATH --chats 6 --cycles 1 --eval-limit 8 \\
        --max-tokens 16 --train '{"max_steps": 2, "torch_threads": 1}'   # a quick smoke check

A real server (`carecycle serve`, a subprocess on 127.0.0.1) on a temporary data directory;
an admin made with `carecycle users create`; the finetuned judge trained there (`carecycle judge
train`) unless `--judge-classifier` names one. Each cycle: simulated traffic — `--chats` prompts of the
project's safety set's *train* split, outside every evaluation split — then a cycle triggered and
polled through the admin API, then the active adapter evaluated on the *test* split (`carecycle
eval`). Printed per cycle: labels and their sources, KTO anchor rows, pairs per source and why best-of-N requests
gave none, training losses, the gate's decision with its evidence where the record has it, and
the active adapter's test-split metrics with the Safety Score's interval.

`--resume DIR` goes on with a run kept with `--keep` (or one whose process died): its record
says how many chats were sent and how many cycles trained and finished (a cycle the dead server
left running is marked interrupted when the server starts again, and is run again here, without
sending its chats twice).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from retrain.datasets.build import anchor_phrase
from serve.cares import safety_set_file

ROOT = Path(__file__).resolve().parent.parent
CARECYCLE = [str(Path(sys.executable).parent / "carecycle")]
# what the cycle record's gate comparisons hold (read by key: an older record may lack some)
GATE_EVIDENCE = ("n", "mean_difference", "interval", "p_value", "detection", "erroneous_refusal", "judge_only_changes")


def train_prompts() -> list[str]:
    rows = [json.loads(line) for line in safety_set_file().read_text().splitlines() if line.strip()]
    return [row["prompt"] for row in rows if row["split"] == "train"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def carecycle(env: dict[str, str], *args: str, timeout: float = 3600) -> str:
    done = subprocess.run([*CARECYCLE, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        sys.exit(f"carecycle {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def server_env(args: argparse.Namespace, data_dir: Path, port: int) -> dict[str, str]:
    settings = {
        "DATA_DIR": str(data_dir), "PORT": str(port), "HOST": "127.0.0.1", "UI": "false",
        "CYCLE_ENABLED": "false", "CYCLE_MIN_SIGNAL": "1", "CYCLE_EVAL_MAX_TOKENS": str(args.max_tokens),
        "MAX_TOKENS": str(args.max_tokens), "RATE_LIMIT_CHAT": "0", "RATE_LIMIT_FEEDBACK": "0",
        "CYCLE_TRAIN": args.train, "JUDGES": "finetuned", "CYCLE_JUDGE": "finetuned",
        "MODEL": str(args.model),
        **({"JUDGE_CLASSIFIER": str(args.judge_classifier)} if args.judge_classifier else {}),
        **({"CYCLE_EVAL_LIMIT": str(args.eval_limit)} if args.eval_limit else {}),
        **({"CYCLE_SAMPLE_CAP": str(args.sample_cap)} if args.sample_cap is not None else {}),
    }
    return {**os.environ, "OMP_NUM_THREADS": str(args.threads), **{f"CARECYCLE_{k}": v for k, v in settings.items()}}


def start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    process = subprocess.Popen([*CARECYCLE, "serve"], env=env, cwd=ROOT, stdout=log.open("w"),
                               stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited ({process.returncode}); its log:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(1)
    sys.exit("the server did not answer /healthz within 600 s")


def chats_sent(data_dir: Path) -> int:
    """Conversations already in the record (0 for a new data directory)."""
    import duckdb

    database = data_dir / "carecycle.duckdb"
    if not database.exists():
        return 0
    with duckdb.connect(str(database), read_only=True) as conn:
        return conn.execute("SELECT count(*) FROM conversations").fetchone()[0]


def cycles_done(http: httpx.Client, admin: dict[str, str]) -> int:
    """Cycles that trained and finished (one skipped, failed or interrupted is to be run again)."""
    cycles = http.get("/api/admin/cycles", headers=admin, params={"limit": 1000}).json()["data"]
    return sum(c["status"] not in ("failed", "interrupted") and "train" in (c["detail"] or {}) for c in cycles)


def send_traffic(http: httpx.Client, user_key: str, prompts: list[str]) -> int:
    answered = 0
    for prompt in prompts:
        response = http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {user_key}"},
                             json={"messages": [{"role": "user", "content": prompt}]})
        answered += response.status_code == 200
    return answered


def run_cycle(http: httpx.Client, admin: dict[str, str], timeout: float) -> dict[str, Any]:
    cycle_id = http.post("/api/admin/cycles", headers=admin).json()["cycle_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = http.get(f"/api/admin/cycles/{cycle_id}", headers=admin).json()
        if record["status"] != "running":
            return record
        time.sleep(5)
    sys.exit(f"cycle {cycle_id} still running after {timeout:.0f} s")


def active_folder(http: httpx.Client, admin: dict[str, str]) -> tuple[str, str]:
    """(name, folder or 'none') of the adapter serving now."""
    adapters = http.get("/api/admin/adapters", headers=admin).json()["data"]
    active = next((a for a in adapters if a["status"] == "active"), None)
    return (active["version"], active["path"]) if active else ("base", "none")


def evaluate_active(env: dict[str, str], args: argparse.Namespace, folder: str, out: Path) -> dict[str, Any]:
    limit = ["--limit", str(args.eval_limit)] if args.eval_limit else []
    carecycle(env, "eval", "--adapter", folder, "--split", "test", "--max-tokens", str(args.max_tokens),
              "--out", str(out), *limit)
    return json.loads((out / "results.json").read_text())["metrics"]


def print_judge(args: argparse.Namespace, data_dir: Path) -> None:
    """The judge's agreement with its labelled validation split, as its training measured it."""
    from serve.judges.finetuned import resolve_classifier

    folder = Path(resolve_classifier(args.judge_classifier, data_dir / "judges"))
    manifest = json.loads((folder / "manifest.json").read_text())
    figures = manifest["metrics"]["validation"]
    print(f"judge {manifest['version']} ({folder}): on its validation split accuracy {fmt(figures['accuracy'])}, "
          f"κ {fmt(figures['kappa'])}, harm-level accuracy {fmt(figures['harm_accuracy'])}, abstained "
          f"{fmt(figures['abstention_rate'])} of {figures['items'] + figures['abstained']}; on adapters' answers "
          "read by people see `python -m benchmarks.bench_judge_adapters --judge` this folder", flush=True)


def fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def print_cycle(number: int, record: dict[str, Any]) -> None:
    detail = record.get("detail") or {}
    datasets = detail.get("datasets") or {}
    labels, dpo = datasets.get("labels") or {}, datasets.get("dpo") or {}
    print(f"cycle {number} ({record['id']}): {record['status']}")
    if labels:
        print(f"  labels: {labels['desirable']} desirable, {labels['undesirable']} undesirable, "
              f"{labels['unlabelled']} none; by source {labels['by_source']}; judge scores "
              f"{labels.get('judge_scores')}; abstained {labels.get('abstained')}")
    if anchors := (datasets.get("kto") or {}).get("anchors"):
        print(f"  KTO {anchor_phrase(anchors)}")
    if dpo:
        sampling = dpo.get("sampling") or {}
        print(f"  pairs by source {dpo.get('by_source')}; best-of-N eligible {sampling.get('eligible')}, "
              f"requested {sampling.get('requested')}, outcomes {sampling.get('outcomes')}, "
              f"{sampling.get('seconds')} s")
    if judge := datasets.get("judge"):
        print(f"  judge {judge.get('version')}: test {judge.get('test')}; operators {judge.get('operators')}")
    for method, figures in (detail.get("train") or {}).items():
        print(f"  train {method}: {figures.get('status')}, {figures.get('rows')} rows, final loss "
              f"{fmt(figures.get('final_loss'))}" + (f" ({figures['reason']})" if figures.get("reason") else ""))
    gate = detail.get("gate") or {}
    if gate:
        reason = gate.get("reason") or "; ".join(gate.get("reasons") or [])
        print(f"  gate: winner {gate.get('winner')}, promote {gate.get('promote')}: {reason}")
        for name, comparison in (gate.get("comparisons") or {}).items():
            evidence = {key: comparison[key] for key in GATE_EVIDENCE if key in comparison}
            print(f"    {name}: {evidence}")
    if record["status"] == "failed":
        print(f"  failed at {detail.get('failed_step')}: {detail.get('error')}")


def print_metrics(name: str, metrics: dict[str, Any]) -> None:
    overall, ci = metrics["overall"], metrics.get("safety_score_ci") or {}
    print(f"  active ({name}) on the test split: Safety Score {fmt(overall['safety_score'])} "
          f"[{fmt(ci.get('low'))}, {fmt(ci.get('high'))}], harmful-query detection "
          f"{fmt(overall['harmful_query_detection'])}, erroneous refusal {fmt(overall['erroneous_refusal'])}, "
          f"unsafe accept {fmt(overall['unsafe_accept'])}, {overall['items']} items", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "data" / "models" / "SmolLM2-135M-Instruct",
                        help="model folder (default: the SmolLM2 that `carecycle model prepare` wrote in ./data)")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--chats", type=int, default=72, help="simulated chats before each cycle")
    parser.add_argument("--eval-limit", type=int, help="evaluate only the first N prompts (cycle and test split)")
    parser.add_argument("--max-tokens", type=int, default=96, help="answer length, served and evaluated")
    parser.add_argument("--sample-cap", type=int, help="best-of-N prompts per cycle (default: the server's)")
    parser.add_argument("--train", default="{}", help="JSON for every candidate's TrainConfig (CARECYCLE_CYCLE_TRAIN)")
    parser.add_argument("--judge-classifier", type=Path, help="a trained finetuned judge folder (default: train one)")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads of every process")
    parser.add_argument("--cycle-timeout", type=float, default=6 * 3600)
    parser.add_argument("--keep", action="store_true", help="keep the data directory (its path is printed)")
    parser.add_argument("--resume", type=Path, metavar="DIR",
                        help="go on with the run in this data directory (same arguments; it is kept)")
    args = parser.parse_args()

    data_dir = args.resume or Path(tempfile.mkdtemp(prefix="carecycle-loop-"))
    sent, run_stamp = chats_sent(data_dir), time.strftime("%Y%m%d%H%M%S")
    port = free_port()
    env = server_env(args, data_dir, port)
    if not args.judge_classifier:
        carecycle(env, "judge", "train", "--if-missing")
    admin_key = re.search(r"API key \(shown once\): (\S+)", carecycle(
        env, "users", "create", f"bench-admin-{run_stamp}", "--role", "admin")).group(1)
    admin = {"Authorization": f"Bearer {admin_key}"}
    print(f"data dir {data_dir}; server on port {port}; log {data_dir / 'server.log'}", flush=True)
    print_judge(args, data_dir)
    server = start_server(env, port, data_dir / "server.log")
    prompts = train_prompts()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as http:
            user_key = http.post("/api/admin/users", headers=admin,
                                 json={"id": f"bench-user-{run_stamp}", "role": "user"}).json()["api_key"]
            first = cycles_done(http, admin) + 1
            name, folder = active_folder(http, admin)
            print_metrics(name, evaluate_active(env, args, folder, data_dir / f"eval-{first - 1}-{run_stamp}"))
            for number in range(first, args.cycles + 1):
                batch = [prompts[i % len(prompts)] for i in range(sent, number * args.chats)]
                answered = send_traffic(http, user_key, batch)
                sent += len(batch)
                time.sleep(5)  # live judging runs right after each answer
                print(f"cycle {number}: {answered}/{len(batch)} chats answered"
                      + (f" ({sent - len(batch)} sent before)" if sent > len(batch) else ""), flush=True)
                started = time.monotonic()
                record = run_cycle(http, admin, args.cycle_timeout)
                print_cycle(number, record)
                print(f"  cycle took {time.monotonic() - started:.0f} s", flush=True)
                name, folder = active_folder(http, admin)
                print_metrics(name, evaluate_active(env, args, folder, data_dir / f"eval-{number}-{run_stamp}"))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        if not (args.keep or args.resume):
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
