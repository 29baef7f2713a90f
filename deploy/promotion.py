"""Changing which adapter serves, without downtime.

The new adapter is loaded beside the active one first (a failure there changes nothing), then
the registry records the change (with its audit row), then new requests switch to it.
Answers already in flight finish on the adapter they started with (the engine captures it per
request). The previous version stays loaded for an instant rollback; older ones are unloaded.
"""

from __future__ import annotations

import logging
import threading

from feedback.errors import CarecycleError, ConflictError
from feedback.registry_record import RegistryRecord
from retrain.training import verify_adapter
from serve.engine import Engine

log = logging.getLogger("carecycle.promotion")
# one switch at a time: the registry and the engine must agree on what is active
_switching = threading.Lock()


def _ensure_loaded(engine: Engine | None, adapter: dict) -> None:
    verify_adapter(adapter["path"])  # the files still match the checksum they were registered with
    if engine is not None and adapter["version"] not in engine.health().get("adapters", []):
        engine.load_adapter(adapter["version"], adapter["path"])


def _activate(engine: Engine | None, version: str | None) -> None:
    if engine is not None:
        engine.activate_adapter(version)


def _unload_quietly(engine: Engine | None, versions: list[str]) -> None:
    """Free retired adapters; the switch has already happened, so a failure here is only logged
    (the memory comes back at the next restart)."""
    for version in versions if engine is not None else []:
        try:
            if version in engine.health().get("adapters", []):
                engine.unload_adapter(version)
        except CarecycleError as exc:
            log.warning("could not unload %s: %s", version, exc)


def promote(engine: Engine | None, registry: RegistryRecord, version: str, actor: str) -> dict:
    """``engine`` None changes the registry only (the CLI, while the server is stopped: it
    serves the registry's active adapter when it starts)."""
    with _switching:
        adapter = registry.adapter(version)
        if adapter["status"] not in ("candidate", "previous", "retired"):
            raise ConflictError(f"adapter {version} is {adapter['status']}: only a candidate, the previous or a "
                                "retired version can be promoted")
        _ensure_loaded(engine, adapter)
        changed = registry.make_active(actor, version, "promote")
        _activate(engine, version)
    _unload_quietly(engine, changed["retired"])
    return changed


def rollback(engine: Engine | None, registry: RegistryRecord, actor: str) -> dict:
    with _switching:
        target = registry.previous_for_rollback()
        if target["version"] is not None:
            _ensure_loaded(engine, target)
        changed = registry.make_active(actor, target["version"], "rollback")
        _activate(engine, target["version"])
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
