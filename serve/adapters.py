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
``unload_adapter``, ``loaded_adapters``) and the rest of carecycle goes through this owner. ``AnswersInFlight`` is the
bookkeeping both engines keep so that an unload waits for the version's last answer.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from feedback.errors import CarecycleError
from serve.errors import AdapterError

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


class AnswersInFlight:
    """The engines' side of "unload once no answer uses it": the answers using each version and
    the versions waiting to be unloaded. Not locked: each engine calls it under its own
    bookkeeping lock."""

    def __init__(self) -> None:
        self._answers: Counter[str] = Counter()
        self._unloading: set[str] = set()

    def claim(self, version: str | None) -> None:
        """An answer starts on ``version`` (None: the base model, nothing to count)."""
        if version is not None:
            self._answers[version] += 1

    def release(self, version: str | None) -> bool:
        """An answer on ``version`` ended; True when the version may be unloaded now."""
        if version is None:
            return False
        self._answers[version] -= 1
        return self.may_unload(version)

    def unload_when_idle(self, version: str, loaded: Collection[str], active: str | None) -> bool:
        """Mark ``version`` to go once its last answer ends; True when none uses it now.
        AdapterError when it is not loaded or still active."""
        if version not in loaded:
            raise AdapterError(f"adapter version {version!r} is not loaded")
        if version == active:
            raise AdapterError(f"adapter version {version!r} is active; activate another one first")
        self._unloading.add(version)
        return self.may_unload(version)

    def activated(self, version: str | None, loaded: Collection[str]) -> None:
        """``version`` becomes active: it stays loaded after all. AdapterError when it is not loaded."""
        if version is not None and version not in loaded:
            raise AdapterError(f"adapter version {version!r} is not loaded; load it first")
        self._unloading.discard(version)

    def unloading(self, version: str | None) -> bool:
        return version in self._unloading

    def may_unload(self, version: str) -> bool:
        """Marked for unloading and no answer uses it (checked again just before the unload: an
        answer may have started since, or the version may be active again)."""
        return version in self._unloading and not self._answers[version]

    def unloaded(self, version: str) -> None:
        self._unloading.discard(version)
