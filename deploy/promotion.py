"""Changing which adapter serves, without downtime.

The new adapter is loaded beside the active one first (a failure there changes nothing), then
the registry records the change (with its audit row), then new requests switch to it.
Answers already in flight finish on the adapter they started with (the engine captures it per
request). The previous version stays loaded for an instant rollback; older ones are unloaded.
"""

from __future__ import annotations

import logging

from feedback.errors import ConflictError
from feedback.registry_record import RegistryRecord
from retrain.training import verify_adapter
from serve.engine import Engine
from serve.errors import AdapterError

log = logging.getLogger("carecycle.promotion")


def _ensure_loaded(engine: Engine, adapter: dict) -> None:
    verify_adapter(adapter["path"])  # the files still match the checksum they were registered with
    if adapter["version"] not in engine.health().get("adapters", []):
        engine.load_adapter(adapter["version"], adapter["path"])


def _unload_quietly(engine: Engine, version: str | None) -> None:
    if version and version in engine.health().get("adapters", []):
        try:
            engine.unload_adapter(version)
        except AdapterError as exc:  # memory is reclaimed on the next restart anyway
            log.warning("could not unload %s: %s", version, exc)


def promote(engine: Engine, registry: RegistryRecord, version: str, actor: str) -> dict:
    adapter = registry.adapter(version)
    if adapter["status"] not in ("candidate", "previous"):
        raise ConflictError(f"adapter {version} is {adapter['status']}: only a candidate or the previous version "
                            "can be promoted")
    _ensure_loaded(engine, adapter)
    changed = registry.make_active(actor, version, "promote")
    engine.activate_adapter(version)
    _unload_quietly(engine, changed["retired"])
    return changed


def rollback(engine: Engine, registry: RegistryRecord, actor: str) -> dict:
    target = registry.previous_for_rollback()
    if target["version"] is not None:
        _ensure_loaded(engine, target)
    changed = registry.make_active(actor, target["version"], "rollback")
    engine.activate_adapter(target["version"])
    _unload_quietly(engine, changed["retired"])
    return changed


def restore_active(engine: Engine, registry: RegistryRecord) -> str | None:
    """On start: serve the registry's active adapter (and keep the previous one ready)."""
    active, previous = registry.with_status("active"), registry.with_status("previous")
    for adapter in (previous, active):
        if adapter is None:
            continue
        try:
            _ensure_loaded(engine, adapter)
        except Exception as exc:  # a damaged adapter must not stop the assistant from serving
            log.error("cannot load %s adapter %s (%s); serving without it", adapter["status"], adapter["version"], exc)
            if adapter is active:
                return None
    if active is not None:
        engine.activate_adapter(active["version"])
        return active["version"]
    return None
