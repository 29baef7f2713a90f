"""Changing which adapter serves, without downtime.

The new adapter is loaded beside the active one first (a failure there changes nothing), then
the registry records the change (with its audit row), then new requests switch to it.
Answers already in flight finish on the adapter they started with (the engine captures it per
request). What the engine holds follows the registry through ``engine.adapters``
(serve.adapters): the active and the previous version loaded, older ones unloaded once no
answer uses them. Every load first checks the folder against the checksum the registry
recorded at training.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import duckdb

from feedback.audit import audit
from feedback.errors import ConflictError
from feedback.registry_record import RegistryRecord
from retrain.training import AdapterIntegrityError, verify_adapter
from serve.adapters import AdapterRef
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


def verified(adapter: dict) -> AdapterRef:
    """A registered adapter the engine may load: its folder passed ``verify_registered``."""
    verify_registered(adapter)
    return AdapterRef(adapter["version"], adapter["path"])


def _load(engine: Engine | None, adapter: dict) -> None:
    verified_adapter = verified(adapter)
    if engine is not None:
        engine.adapters.load(verified_adapter)


def _serve_registry(engine: Engine | None, registry: RegistryRecord) -> None:
    """Make ``engine`` serve the registry's active adapter and keep its previous one loaded, if
    that one passes its check."""
    if engine is None:
        return
    active = registry.with_status("active")
    engine.adapters.activate(verified(active) if active else None, _previous_that_loads(registry))


def _previous_that_loads(registry: RegistryRecord) -> AdapterRef | None:
    previous = registry.with_status("previous")
    if previous is None:
        return None
    try:
        return verified(previous)
    except AdapterError as exc:  # no instant rollback to it, but serving goes on
        log.error("the previous adapter is not kept loaded: %s", exc)
        return None


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
        _load(engine, adapter)
        changed = registry.make_active(actor, version, "promote", also)
        _serve_registry(engine, registry)
    return changed


def rollback(engine: Engine | None, registry: RegistryRecord, actor: str) -> dict:
    with _switching:
        target = registry.previous_for_rollback()
        if target["version"] is not None:
            _load(engine, target)
        changed = registry.make_active(actor, target["version"], "rollback")
        _serve_registry(engine, registry)
    return changed


def restore_active(engine: Engine, registry: RegistryRecord) -> str | None:
    """Serve the registry's active adapter (or the base model) and keep the previous one ready:
    on start, and in every replica that follows the registry.

    An active adapter that fails its registered checksum is never served, and the registry says
    so: it rolls back (audited as ``system:integrity``) to the previous version if that one
    loads, else to the base model, so that the registry and what is served agree. An engine that
    cannot load a sound adapter changes nothing in the registry (a vLLM that comes back gets the
    active adapter again on its next request)."""
    active, previous = registry.with_status("active"), registry.with_status("previous")
    try:
        active_ref = verified(active) if active is not None else None
    except AdapterError as exc:
        fallback = previous["version"] if previous is not None and _loads(engine, previous) else None
        log.error("%s; serving %s instead", exc, fallback or "the base model")
        with _switching:
            registry.make_active(INTEGRITY_ACTOR, fallback, "rollback", also=lambda conn: audit(
                conn, INTEGRITY_ACTOR, "adapter.refused", active["version"], reason=str(exc)))
            _serve_registry(engine, registry)
        return fallback
    try:
        engine.adapters.activate(active_ref, _previous_that_loads(registry))
    except Exception as exc:  # a damaged adapter must not stop the assistant from serving
        log.error("cannot load the active adapter %s (%s)", active["version"], exc)
        return None
    return active_ref.version if active_ref else None


def _loads(engine: Engine, adapter: dict) -> bool:
    try:
        _load(engine, adapter)
    except Exception as exc:  # a damaged adapter must not stop the assistant from serving
        log.error("cannot load %s adapter %s (%s)", adapter["status"], adapter["version"], exc)
        return False
    return True
