"""The engine contract and the registry that picks an engine by name.

The registry maps names to "module:Class" strings so that importing carecycle never imports
torch (or an HTTP client for vLLM) until an engine is actually built.
"""

from __future__ import annotations

import abc
import importlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from feedback.errors import CarecycleError

if TYPE_CHECKING:
    from serve.adapters import AdapterLifecycle

ENGINES: dict[str, str] = {
    "local": "serve.local_engine:LocalEngine",
    "vllm": "serve.vllm_engine:VLLMEngine",
}


ACTIVE = "__active__"  # generate() with the adapter that is active when the request arrives


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int | None = None


@dataclass
class Generation:
    """One answer being produced: iterate it for text deltas; the counts are set when it ends."""

    deltas: AsyncIterator[str]
    adapter_version: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    # set by the consumer (e.g. the client went away): the engine stops at the next token
    cancelled: threading.Event = field(default_factory=threading.Event)

    def __aiter__(self) -> AsyncIterator[str]:
        return self.deltas


class Engine(abc.ABC):
    """What the chat service needs from a model server."""

    model_id: str

    @abc.abstractmethod
    def generate(self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = ACTIVE) -> Generation:
        """Start answering ``messages`` (OpenAI-style dicts) with ``adapter``: by default the one
        active now, None for the base model, or a loaded version (evaluation of a candidate)."""

    async def answer_many(self, conversations: list[list[dict[str, str]]], max_new_tokens: int,
                          adapter: str | None = None) -> list[str]:
        """Greedy answers to many conversations, in order, with ``adapter`` (None: the base
        model), for evaluation. By default every conversation is a request in flight at once
        (an engine that batches requests in flight itself, as vLLM does); LocalEngine runs them
        as one padded batch (``generate_batch``)."""
        from serve.batch_generation import generate_many

        params = GenerationParams(max_tokens=max_new_tokens, temperature=0.0)
        return await generate_many(self, conversations, params, max(1, len(conversations)), adapter=adapter)

    # -- adapters: the primitives that ``adapters`` (serve.adapters) drives -------------
    @cached_property
    def adapters(self) -> AdapterLifecycle:
        """The one owner of which adapters this engine holds: promotion, rollback, following the
        registry and evaluation go through it, never through the primitives below."""
        from serve.adapters import AdapterLifecycle

        return AdapterLifecycle(self)

    @property
    @abc.abstractmethod
    def active_adapter(self) -> str | None:
        """The adapter version new requests use (None: the base model)."""

    @abc.abstractmethod
    def loaded_adapters(self) -> list[str]:
        """The adapter versions loaded now (including those waiting to be freed)."""

    @abc.abstractmethod
    def load_adapter(self, version: str, path: str) -> None:
        """Load an adapter beside the others, under a version name never used before."""

    @abc.abstractmethod
    def activate_adapter(self, version: str | None) -> None:
        """Make new requests use ``version`` (None: the base model); requests in flight keep theirs."""

    @abc.abstractmethod
    def unload_adapter(self, version: str) -> None:
        """Free an adapter that is not active, once no answer uses it any more."""

    @abc.abstractmethod
    def health(self) -> dict[str, Any]:
        """A small status dict; raises EngineUnavailableError when the engine cannot answer."""

    def close(self) -> None:
        """Release resources; engines without any need not override."""


def create_engine(kind: str, **options: Any) -> Engine:
    if kind not in ENGINES:
        raise CarecycleError(f"unknown engine {kind!r}; available: {', '.join(sorted(ENGINES))}")
    module_name, class_name = ENGINES[kind].split(":")
    engine_class = getattr(importlib.import_module(module_name), class_name)
    return engine_class(**options)
