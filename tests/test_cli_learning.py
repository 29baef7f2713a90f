"""The learning loop from the command line, on a record made by the running app (tiny model)."""

import json

import httpx
import pytest

from tests.conftest import start_server
from tests.test_cli import run_cli
from tests.test_cycle import TRAIN


@pytest.fixture
def recorded(settings, tiny_engine):
    """A data directory whose record holds voted chats; the server has stopped (the CLI needs the file)."""
    with start_server(settings.model_copy(update={"rate_limit_chat": 0, "rate_limit_feedback": 0}), tiny_engine) as live:
        with httpx.Client(base_url=live.url, timeout=60) as http:
            for i in range(6):
                answer = http.post("/v1/chat/completions", json={"messages": [
                    {"role": "user", "content": f"my child has a fever of 39, question {i}; call me at 555-867-5309"}]}).json()
                http.post("/api/feedback", json={"message_id": answer["id"], "rating": "up" if i % 2 else "down"})
    return settings


def cli(settings, *args):
    result = run_cli(*args, data_dir=settings.data_dir, CARECYCLE_MODEL=str(settings.model_source),
                     CARECYCLE_CYCLE_TRAIN=json.dumps(TRAIN), CARECYCLE_CYCLE_MIN_SIGNAL="1", CARECYCLE_JUDGES="")
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_export_writes_a_scrubbed_dataset_that_datasets_loads(recorded, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "kto.jsonl"
    assert "wrote 6 KTO rows" in cli(recorded, "export", "--format", "kto", "--as", "jsonl", "--out", str(out))
    rows = load_dataset("json", data_files=str(out), split="train")
    assert len(rows) == 6 and sorted(rows.column_names) == ["completion", "label", "message_ids", "prompt"]
    assert sum(rows["label"]) == 3
    prompts = " ".join(row["prompt"][-1]["content"] for row in rows)
    assert "555-867-5309" not in prompts and "[PHONE]" in prompts  # PHI scrubbed before it left the record
    assert "dataset.export" in cli(recorded, "audit")


def test_retrain_then_promote_and_roll_back_from_the_cli(recorded):
    out = cli(recorded, "retrain", "--method", "kto", "--train-only")
    assert '"decision": "trained only"' in out
    assert "kto: ok" in out
    version = next(line.split()[1].rstrip(":") for line in out.splitlines() if line.startswith("candidate kto-"))
    listing = cli(recorded, "adapters", "list")
    assert version in listing and "candidate" in listing
    shown = json.loads(cli(recorded, "adapters", "show", version))
    assert shown["method"] == "kto" and shown["checksum"] and shown["snapshot_id"]
    assert json.loads(cli(recorded, "adapters", "promote", version))["active"] == version
    assert json.loads(cli(recorded, "adapters", "rollback"))["active"] is None
    audit = cli(recorded, "audit")
    assert "adapter.promote" in audit and "adapter.rollback" in audit


def test_eval_prints_scores_and_writes_results_and_report(recorded, tmp_path):
    out_dir = tmp_path / "run"
    out = cli(recorded, "eval", "--judge", "self", "--limit", "4", "--max-tokens", "4", "--out", str(out_dir))
    assert "Safety Score" in out and "unparsed" in out
    results = json.loads((out_dir / "results.json").read_text())
    assert results["metrics"]["overall"]["items"] == 4
    assert "<svg" in (out_dir / "report.html").read_text()


def test_unknown_adapter_and_bad_format_are_one_line_errors(recorded):
    result = run_cli("eval", "--adapter", "kto-nope", data_dir=recorded.data_dir, CARECYCLE_MODEL=str(recorded.model_source))
    assert result.returncode == 2 and "unknown adapter version 'kto-nope'" in result.stderr
    result = run_cli("export", "--format", "sft", "--out", "x", data_dir=recorded.data_dir)
    assert result.returncode == 2 and "--format takes kto or dpo" in result.stderr
