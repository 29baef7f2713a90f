"""VLLMEngine: answers through a vLLM OpenAI-compatible server running as its own process.

vLLM lives in its own virtual environment (see deploy/vllm/), so this module only talks HTTP
and never imports torch. Adapters are loaded at run time under their version as vLLM's name: a
version always names the same weights (versions are never reused), so every carecycle process
that shares one vLLM (app replicas, the worker) asks for the same name and the adapter is loaded
once; a load that vLLM answers "already loaded" (another process loaded it) counts as done. An
adapter counts as loaded only once vLLM has confirmed it; which ones stay loaded is decided by
``engine.adapters`` (serve.adapters), and an adapter being unloaded goes only once no answer
streams from it any more. An engine made with ``frees_adapters=False`` (an app replica beside a
`carecycle worker`) then only forgets it: another replica may still serve it, and the worker
frees the versions the registry retired. vLLM forgets run-time adapters when it restarts: the
active one is re-loaded from its path when ``health()`` finds it missing or when a request for it
comes back "model does not exist".

Admin calls (adapters, health) use a blocking client, as the Engine contract is synchronous;
answers stream through an async client, one per event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx

from feedback.errors import CarecycleError
from serve.adapters import AnswersInFlight
from serve.engine import ACTIVE, Engine, Generation, GenerationParams
from serve.errors import AdapterError, EngineUnavailableError, ModelLoadError

log = logging.getLogger(__name__)

START_HINT = "start vLLM with `carecycle vllm start` or check CARECYCLE_VLLM_URL"
_RANK = re.compile(r"rank (\d+) is greater than max_lora_rank (\d+)")
_OUT_OF_MEMORY = re.compile(r"out of memory|OutOfMemory|\bOOM\b", re.IGNORECASE)
_ALREADY_LOADED = re.compile(r"has already been loaded")  # vLLM's 400 for a name it holds


def _message(body: str) -> str:
    """vLLM's error message out of an error body (OpenAI shape or plain text)."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return body.strip()
    return error.get("message", str(error)) if isinstance(error, dict) else str(error or body)


class VLLMEngine(Engine):
    def __init__(
        self,
        base_url: str,
        model_id: str,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        frees_adapters: bool = True,
    ):
        self.base_url = base_url.rstrip("/")
        self.model_id = model_id  # the name vLLM serves the base model under (--served-model-name)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._client = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=self._timeout)
        self._async_client: httpx.AsyncClient | None = None
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._registry_lock = threading.Lock()
        self._name_locks: dict[str, threading.Lock] = {}
        self._adapters: dict[str, str] = {}  # version (vLLM's name for it) -> the folder it loads from
        # False where other carecycle processes share this vLLM and one of them frees adapters
        self.frees_adapters = frees_adapters
        self._active: str | None = None
        self._answers = AnswersInFlight()  # an adapter is unloaded only once no answer streams from it

    # -- errors ----------------------------------------------------------------------
    def _unreachable(self, exc: httpx.TransportError) -> EngineUnavailableError:
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
            return EngineUnavailableError(f"cannot reach vLLM at {self.base_url} ({type(exc).__name__}): {START_HINT}")
        if isinstance(exc, httpx.TimeoutException):
            return EngineUnavailableError(
                f"vLLM at {self.base_url} did not answer within {self._timeout.read:g} s: it may be overloaded; "
                "raise CARECYCLE_VLLM_TIMEOUT_S or check the vLLM log"
            )
        return EngineUnavailableError(
            f"the connection to vLLM at {self.base_url} failed ({type(exc).__name__}: {exc}): {START_HINT}"
        )

    def _vllm_error(self, status: int, body: str) -> CarecycleError:
        message = _message(body)
        if status == 401:
            return EngineUnavailableError(
                f"vLLM at {self.base_url} refused carecycle's API key: "
                "set CARECYCLE_VLLM_API_KEY to the --api-key vLLM was started with"
            )
        if status >= 500 and _OUT_OF_MEMORY.search(message):
            return EngineUnavailableError(
                f"vLLM at {self.base_url} ran out of memory ({message}): serve a smaller model, lower --max-model-len "
                "or --max-num-seqs, or give vLLM more memory (--gpu-memory-utilization on GPU, VLLM_CPU_KVCACHE_SPACE "
                "on CPU); see deploy/vllm/README.md"
            )
        return EngineUnavailableError(f"vLLM at {self.base_url} answered {status}: {message}")

    def _adapter_error(self, version: str, path: str, response: httpx.Response) -> CarecycleError:
        rank = _RANK.search(response.text)
        if rank:
            return AdapterError(
                f"adapter {version!r} has LoRA rank {rank[1]}, above vLLM's --max-lora-rank {rank[2]}: restart vLLM "
                f"with --max-lora-rank {rank[1]} or more (CARECYCLE_VLLM_MAX_LORA_RANK), or train with r <= {rank[2]}"
            )
        if response.status_code >= 500:
            return self._vllm_error(response.status_code, response.text)
        return AdapterError(f"vLLM cannot load adapter {version!r} from {path}: {_message(response.text)}")

    # -- blocking HTTP (admin) -------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code == 401:
            raise self._vllm_error(401, response.text)
        return response

    def _models(self) -> list[dict[str, Any]]:
        response = self._request("GET", "/v1/models")
        if response.status_code != 200:
            raise self._vllm_error(response.status_code, response.text)
        return response.json()["data"]

    def served_models(self) -> list[str]:
        """The names vLLM answers to now: the base model and the adapters it holds."""
        return [model["id"] for model in self._models()]

    def _not_served(self, models: list[dict[str, Any]]) -> ModelLoadError:
        bases = [model["id"] for model in models if model.get("parent") is None]
        return ModelLoadError(
            f"vLLM at {self.base_url} does not serve {self.model_id!r}; it serves {', '.join(bases) or 'nothing'}: "
            f"start vLLM with --served-model-name {self.model_id} (as `carecycle vllm start` does) "
            "or point CARECYCLE_MODEL at the model it serves"
        )

    # -- adapters --------------------------------------------------------------------
    @property
    def active_adapter(self) -> str | None:
        return self._active

    def _lock(self, version: str) -> threading.Lock:
        with self._registry_lock:
            return self._name_locks.setdefault(version, threading.Lock())

    def _load_into_vllm(self, version: str, path: str) -> None:
        """Load ``path`` into vLLM as ``version``; returns once vLLM holds it (loaded now, or
        already loaded by another process sharing this vLLM)."""
        response = self._request("POST", "/v1/load_lora_adapter", json={"lora_name": version, "lora_path": path})
        if response.status_code == 400 and _ALREADY_LOADED.search(response.text):
            return
        if response.status_code != 200:
            raise self._adapter_error(version, path, response)

    def _unload_name(self, name: str) -> None:
        response = self._request("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
        if response.status_code not in (200, 404):  # 404: vLLM no longer holds it (restarted)
            raise self._vllm_error(response.status_code, response.text)

    def load_adapter(self, version: str, path: str) -> None:
        with self._lock(version):
            if version in self._adapters:
                raise AdapterError(f"adapter version {version!r} was already loaded; versions are never reused")
            self._load_into_vllm(version, path)
            self._adapters[version] = path

    def activate_adapter(self, version: str | None) -> None:
        with self._registry_lock:
            self._answers.activated(version, self._adapters)
            self._active = version

    def unload_adapter(self, version: str) -> None:
        """Free an adapter; while answers still stream from it, it goes when the last one ends."""
        with self._registry_lock:
            idle = self._answers.unload_when_idle(version, self._adapters, self._active)
        if idle:
            self._drop(version)

    def _drop(self, version: str) -> None:
        """Forget an adapter marked for unloading once no answer uses it (checked again here: an
        answer may have started, or it may be active again) and, if this engine frees adapters,
        free it in vLLM; a failure there only costs memory."""
        with self._lock(version), self._registry_lock:
            if not self._answers.may_unload(version):
                return
            self._answers.unloaded(version)
            path = self._adapters.pop(version, None)
        if path is None or not self.frees_adapters:
            return
        try:
            self._unload_name(version)
        except CarecycleError as exc:
            log.warning("adapter %s stays loaded in vLLM: %s", version, exc)

    def _claim(self, version: str | None) -> None:
        with self._registry_lock:
            self._answers.claim(version)

    def _release(self, version: str | None) -> None:
        """An answer on ``version`` ended: free the adapter (off the event loop) if it waits for that."""
        with self._registry_lock:
            idle = self._answers.release(version)
        if idle:
            asyncio.get_running_loop().run_in_executor(None, self._drop, version)

    def _restore(self, version: str) -> None:
        """Re-load an adapter vLLM lost (it restarted); whoever asks after the first finds it loaded."""
        with self._lock(version):
            path = self._adapters.get(version)
            if path is None:
                raise AdapterError(f"adapter version {version!r} was unloaded while a request for it waited")
            self._load_into_vllm(version, path)
            log.info("vLLM had lost adapter %s: re-loaded it", version)

    def loaded_adapters(self) -> list[str]:
        return list(self._adapters)

    def health(self) -> dict[str, Any]:
        response = self._request("GET", "/health")
        if response.status_code != 200:
            raise EngineUnavailableError(
                f"vLLM at {self.base_url} is not healthy ({response.status_code}): check the vLLM log"
            )
        models = self._models()
        served = [model["id"] for model in models]
        if self.model_id not in served:
            raise self._not_served(models)
        active = self._active
        if active is not None and active in self._adapters and active not in served:
            self._restore(active)
        return {
            "engine": "vllm", "url": self.base_url, "model": self.model_id,
            "adapter": active, "adapters": self.loaded_adapters(),
        }

    # -- generation ------------------------------------------------------------------
    def generate(self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = ACTIVE) -> Generation:
        version = self._active if adapter == ACTIVE else adapter
        if version is not None and version not in self._adapters:
            raise AdapterError(f"adapter version {version!r} is not loaded")
        generation = Generation(deltas=None, adapter_version=version)  # type: ignore[arg-type]
        model = version if version is not None else self.model_id
        generation.deltas = self._stream(messages, params, generation, model)
        return generation

    def _client_for_this_loop(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._async_client is None or self._async_loop is not loop:
            self._async_client = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=self._timeout)
            self._async_loop = loop
        return self._async_client

    def _body(self, messages: list[dict[str, str]], params: GenerationParams, model: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model, "messages": messages, "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": params.max_tokens, "temperature": params.temperature, "top_p": params.top_p,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        return body

    async def _stream(
        self, messages: list[dict[str, str]], params: GenerationParams, generation: Generation, model: str
    ) -> AsyncIterator[str]:
        client = self._client_for_this_loop()
        self._claim(generation.adapter_version)
        try:
            for attempt in (1, 2):
                body = self._body(messages, params, model)
                async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    if response.status_code == 404 and generation.adapter_version is not None and attempt == 1:
                        await asyncio.to_thread(self._restore, generation.adapter_version)
                        continue
                    if response.status_code != 200:
                        raise await self._stream_error(response)
                    async for delta in self._deltas(response, generation):
                        yield delta
                    return
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        finally:
            self._release(generation.adapter_version)

    async def _stream_error(self, response: httpx.Response) -> CarecycleError:
        body = (await response.aread()).decode(errors="replace")
        if response.status_code == 404:
            models = await asyncio.to_thread(self._models)
            if self.model_id not in [model["id"] for model in models]:
                return self._not_served(models)
        return self._vllm_error(response.status_code, body)

    async def _deltas(self, response: httpx.Response, generation: Generation) -> AsyncIterator[str]:
        async for line in response.aiter_lines():
            if generation.cancelled.is_set():
                return  # leaving closes the connection, and vLLM aborts the request
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if "error" in chunk:  # vLLM failed after it had started streaming
                code = chunk["error"].get("code") if isinstance(chunk["error"], dict) else None
                raise self._vllm_error(int(code or 500), json.dumps(chunk))
            if chunk.get("usage"):
                generation.prompt_tokens = chunk["usage"]["prompt_tokens"]
                generation.completion_tokens = chunk["usage"]["completion_tokens"]
            for choice in chunk.get("choices", []):
                if choice.get("finish_reason"):
                    generation.finish_reason = choice["finish_reason"]
                if text := choice["delta"].get("content"):
                    yield text

    def close(self) -> None:
        self._client.close()
        client, loop = self._async_client, self._async_loop
        self._async_client = self._async_loop = None
        if client is not None and loop is not None and loop.is_running():
            loop.call_soon_threadsafe(lambda: loop.create_task(client.aclose()))
