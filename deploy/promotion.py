"""Changing which adapter serves, without downtime.

The new adapter is loaded beside the active one first (a failure there changes nothing), then
the registry records the change (with its audit row), then new requests switch to it.
Answers already in flight finish on the adapter they started with (the engine captures it per
request). The previous version stays loaded for an instant rollback; older ones are unloaded.
Every load first checks the folder against the checksum the registry recorded at training.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import duckdb

from feedback.audit import audit
from feedback.errors import CarecycleError, ConflictError
from feedback.registry_record import RegistryRecord
from retrain.training import AdapterIntegrityError, verify_adapter
from serve.engine import Engine
from serve.errors import AdapterError

log = logging.getLogger("carecycle.promotion")
# one switch at a time: the registry and the engine must agree on what is active
_switching = threading.Lock()
INTEGRITY_ACTOR = "system:integrity"


def verify_registered(adapter: dict) -> None:
    """The folder's files match its manifest and the manifest's checksum is the one the registry
    recorded at training: a folder changed afterwards, manifest rewritten or not, is refused."""
    try:
        manifest = verify_adapter(adapter["path"])
    except AdapterIntegrityError as exc:
        raise AdapterError(f"adapter {adapter['version']} refused: {exc}") from exc
    if manifest.get("checksum") != adapter["checksum"]:
        raise AdapterError(
            f"adapter {adapter['version']} refused: {adapter['path']} has checksum {manifest.get('checksum')} but the "
            f"registry recorded {adapter['checksum']} when it was trained; it was changed since: retrain it")


def _ensure_loaded(engine: Engine | None, adapter: dict) -> None:
    verify_registered(adapter)
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


def promote(engine: Engine | None, registry: RegistryRecord, version: str, actor: str,
            also: Callable[[duckdb.DuckDBPyConnection], None] | None = None) -> dict:
    """``engine`` None changes the registry only (the CLI, while the server is stopped: it
    serves the registry's active adapter when it starts). ``also`` runs in the registry's
    transaction (an approval's record and audit row): if it fails, nothing is promoted."""
    with _switching:
        adapter = registry.adapter(version)
        if adapter["status"] not in ("candidate", "previous", "retired"):
            raise ConflictError(f"adapter {version} is {adapter['status']}: only a candidate, the previous or a "
                                "retired version can be promoted")
        _ensure_loaded(engine, adapter)
        changed = registry.make_active(actor, version, "promote", also)
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
    """On start: serve the registry's active adapter (and keep the previous one ready).

    An active adapter that fails its registered checksum is never served, and the registry says
    so: it rolls back (audited as ``system:integrity``) to the previous version if that one
    loads, else to the base model, so that the registry and what is served agree. An engine that
    cannot load a sound adapter changes nothing in the registry (a vLLM that comes back gets the
    active adapter again on its next request)."""
    active, previous = registry.with_status("active"), registry.with_status("previous")
    previous_loads = previous is not None and _loads(engine, previous)
    if active is None:
        return None
    try:
        verify_registered(active)
    except AdapterError as exc:
        log.error("%s; serving %s instead", exc, previous["version"] if previous_loads else "the base model")
        fallback = previous["version"] if previous_loads else None
        with _switching:
            registry.make_active(INTEGRITY_ACTOR, fallback, "rollback", also=lambda conn: audit(
                conn, INTEGRITY_ACTOR, "adapter.refused", active["version"], reason=str(exc)))
            _activate(engine, fallback)
        return fallback
    if not _loads(engine, active):
        return None
    engine.activate_adapter(active["version"])
    return active["version"]


def _loads(engine: Engine, adapter: dict) -> bool:
    try:
        _ensure_loaded(engine, adapter)
    except Exception as exc:  # a damaged adapter must not stop the assistant from serving
        log.error("cannot load %s adapter %s (%s)", adapter["status"], adapter["version"], exc)
        return False
    return True
