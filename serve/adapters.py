"""The one owner of which adapters an engine holds: ``engine.adapters``.

Promotion, rollback, serving the registry's choice when a process starts or follows the
registry (every app replica), and the cycle's evaluation all go through it. ``activate`` is
the entry point that changes what is served: it loads the adapter first (a failure changes
nothing), makes it the one new requests use, keeps the version it replaces loaded for an
instant rollback, and unloads every other version that nobody keeps. The engine frees a
version only once no answer uses it any more: an answer that started on a version finishes
on it. Versions loaded for another purpose (a candidate under evaluation, one awaiting
approval) are kept until released.

The engines provide the primitives (``load_adapter``, ``activate_adapter``,
``unload_adapter``, ``loaded_adapters``); nothing else calls them.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from feedback.errors import CarecycleError

if TYPE_CHECKING:
    from serve.engine import Engine

log = logging.getLogger("carecycle.adapters")


@dataclass(frozen=True)
class AdapterRef:
    """An adapter version and the folder it loads from."""

    version: str
    path: str


class AdapterLifecycle:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._lock = threading.Lock()
        self._previous: str | None = None
        self._kept: set[str] = set()

    @property
    def previous(self) -> str | None:
        """The version kept loaded for a rollback (None: none, or the base model)."""
        return self._previous

    @property
    def kept(self) -> set[str]:
        return set(self._kept)

    def activate(self, active: AdapterRef | None, previous: AdapterRef | None = None) -> None:
        """Serve ``active`` (None: the base model) to new requests and keep ``previous`` loaded
        for an instant rollback (None: no version); then unload every version that neither needs
        nor anyone keeps. Loading ``active`` fails with AdapterError and changes nothing;
        a ``previous`` that will not load is only logged (a rollback would load it again)."""
        with self._lock:
            if active is not None:
                self._load(active)
            if previous is not None:
                self._load_quietly(previous)
            self.engine.activate_adapter(active.version if active else None)
            self._previous = previous.version if previous else None
            if active is not None:
                self._kept.discard(active.version)  # from now on it lives as the active, then the previous one
            self._unload_unused()

    def load(self, adapter: AdapterRef) -> None:
        """Load ``adapter`` beside the others if the engine does not hold it (before a promotion
        records it, so that a failure changes nothing); the next ``activate`` unloads it unless
        it serves, is the previous version or is kept."""
        with self._lock:
            self._load(adapter)

    def keep(self, adapter: AdapterRef) -> None:
        """Load ``adapter`` and keep it loaded until ``release`` (evaluation, awaiting approval)."""
        with self._lock:
            self._load(adapter)
            self._kept.add(adapter.version)

    def release(self, version: str) -> None:
        """``version`` is no longer kept: unloaded unless it serves or is the previous version."""
        with self._lock:
            self._kept.discard(version)
            self._unload_unused()

    def _load(self, adapter: AdapterRef) -> None:
        if adapter.version not in self.engine.loaded_adapters():
            self.engine.load_adapter(adapter.version, adapter.path)

    def _load_quietly(self, adapter: AdapterRef) -> None:
        try:
            self._load(adapter)
        except CarecycleError as exc:
            log.error("cannot load the previous adapter %s, kept for a rollback (%s)", adapter.version, exc)

    def _unload_unused(self) -> None:
        """Unload the versions nothing needs; a failure only costs memory until the next restart."""
        needed = {self.engine.active_adapter, self._previous, *self._kept}
        for version in self.engine.loaded_adapters():
            if version not in needed:
                try:
                    self.engine.unload_adapter(version)
                except CarecycleError as exc:
                    log.warning("could not unload adapter %s: %s", version, exc)
