"""Adapters are checked against the checksum the registry recorded at training, before every load
or promotion: a folder whose manifest was rewritten to match changed weights is refused."""

import shutil

import httpx
import pytest

from tests.conftest import start_server
from tests.test_chat_api import bearer
from tests.test_evaluation import lora_adapter


def trained_adapter(model_dir, folder):
    """A real peft LoRA folder for the tiny model with carecycle's manifest, as training writes it."""
    from retrain.training.adapter_folder import finish, partial_path

    partial = partial_path(folder)
    lora_adapter(model_dir, partial)
    return finish(partial, folder, {"method": "kto"})["checksum"]


def register(registry, version, folder, checksum):
    registry.register(version, None, "kto", str(folder), checksum, "tiny", "snap-1", [])


def tamper(folder, model_dir, tmp_path):
    """Other weights, and a manifest rewritten to match them: the folder agrees with itself."""
    import json

    from retrain.training.adapter_folder import MANIFEST, combined_checksum, file_digests, verify_adapter

    other = lora_adapter(model_dir, tmp_path / "other-weights")
    shutil.copy(other / "adapter_model.safetensors", folder / "adapter_model.safetensors")
    manifest = json.loads((folder / MANIFEST).read_text())
    digests = file_digests(folder)
    (folder / MANIFEST).write_text(json.dumps({**manifest, "files": digests, "checksum": combined_checksum(digests)}))
    verify_adapter(folder)  # passes: only the registry's checksum can tell


@pytest.fixture
def engine(tiny_model_dir):
    from serve.local_engine import LocalEngine

    return LocalEngine(str(tiny_model_dir), model_id="tiny")  # its own: these tests load adapters into it


def test_a_tampered_adapter_with_a_rewritten_manifest_is_never_promoted(settings, engine, tiny_model_dir, tmp_path):
    from feedback.accounts import Accounts
    from feedback.registry_record import RegistryRecord

    with start_server(settings, engine) as live:
        registry = RegistryRecord(live.store)
        folder = settings.adapters_dir / "kto-1"
        register(registry, "kto-1", folder, trained_adapter(tiny_model_dir, folder))
        tamper(folder, tiny_model_dir, tmp_path)
        admin = Accounts(live.store).create("test", "ada", "admin")
        before = registry.adapters()

        response = httpx.post(live.url + "/api/admin/adapters/kto-1/promote", headers=bearer(admin), timeout=60)
        assert response.status_code == 409, response.text
        assert "registry recorded" in response.json()["error"]["message"]
        assert registry.adapters() == before  # still a candidate, nothing active
        assert engine.active_adapter is None and engine.health()["adapters"] == []
        assert live.store.read("SELECT * FROM audit_log WHERE action LIKE 'adapter.%'") == []


def test_an_untouched_adapter_is_promoted(settings, engine, tiny_model_dir):
    """The control for the test above: the same steps without the tampering promote."""
    from feedback.accounts import Accounts
    from feedback.registry_record import RegistryRecord

    with start_server(settings, engine) as live:
        registry = RegistryRecord(live.store)
        folder = settings.adapters_dir / "kto-1"
        register(registry, "kto-1", folder, trained_adapter(tiny_model_dir, folder))
        admin = Accounts(live.store).create("test", "ada", "admin")
        response = httpx.post(live.url + "/api/admin/adapters/kto-1/promote", headers=bearer(admin), timeout=60)
        assert response.status_code == 200, response.text
        assert engine.active_adapter == "kto-1" == registry.with_status("active")["version"]


@pytest.mark.parametrize("with_previous", [True, False])
def test_a_restart_with_a_corrupt_active_adapter_serves_what_the_registry_says(
        settings, engine, tiny_model_dir, tmp_path, with_previous):
    from deploy.promotion import promote
    from feedback.registry_record import RegistryRecord
    from feedback.store import Store

    with Store(settings.record_path) as store:  # the server is stopped: the CLI's way of promoting
        registry = RegistryRecord(store)
        for version in ("kto-1", "kto-2") if with_previous else ("kto-2",):
            folder = settings.adapters_dir / version
            register(registry, version, folder, trained_adapter(tiny_model_dir, folder))
            promote(None, registry, version, "cli")
    tamper(settings.adapters_dir / "kto-2", tiny_model_dir, tmp_path)

    expected = "kto-1" if with_previous else None
    with start_server(settings, engine) as live:
        registry = RegistryRecord(live.store)
        active = registry.with_status("active")
        assert (active["version"] if active else None) == expected == engine.active_adapter
        assert registry.adapter("kto-2")["status"] == "retired"
        refused = live.store.read("SELECT actor, target FROM audit_log WHERE action = 'adapter.refused'")
        assert refused == [{"actor": "system:integrity", "target": "kto-2"}]
        health = httpx.get(live.url + "/healthz", timeout=60).json()
        assert health["engine"]["adapter"] == expected
