"""LocalEngine: transformers + peft inside the server process (the embedded default).

One model instance answers every chat. Requests that arrive together are generated
together: a scheduler thread takes what is waiting (after a short admission window when it
was idle) and runs it as one padded batch, each row streaming its own tokens to its own
client and ending on its own. A batch holds only requests on the same adapter with the
same sampling settings; a seeded sampled request runs alone, so that its seed gives the
same answer as ever. Each request keeps the adapter that was active when it arrived, so a
promotion never changes an answer in flight. Requests that arrive while a batch runs form
the next one.

A batch runs with its adapter merged into the weights (serve.merged_weights), as fast as the
base model: the switch is model-wide and happens between batches, and never writes the base
weights, so a rollback is exact and instant.

Locks, always taken in this order: the model lock (held by a running batch, an adapter
load or delete, and evaluation's ``generate_batch``), then the adapters lock (bookkeeping
only, never held while waiting for the model). The event loop takes only the adapters
lock, so it never waits for a generation.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve.adapters import AnswersInFlight
from serve.engine import ACTIVE, Engine, Generation, GenerationParams
from serve.errors import AdapterError, EngineUnavailableError, ModelLoadError
from serve.merged_weights import MergedWeights, unmergeable

_DONE = object()
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
DEVICES = ("auto", "cpu", "cuda")
log = logging.getLogger("carecycle")


def select_device(requested: str = "auto") -> tuple[str, str]:
    """The device the embedded engine uses and why: ``auto`` takes CUDA when torch sees it."""
    import torch

    if requested not in DEVICES:
        raise ModelLoadError(f"CARECYCLE_DEVICE={requested!r} is not a device; use auto, cpu or cuda")
    if requested == "cpu":
        return "cpu", "CARECYCLE_DEVICE=cpu"
    if torch.cuda.is_available():
        why = "CARECYCLE_DEVICE=cuda" if requested == "cuda" else "auto: CUDA is available"
        return "cuda", f"{why} ({torch.cuda.get_device_name(0)})"
    build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}, no device found"
    if requested == "cuda":
        raise ModelLoadError(f"CARECYCLE_DEVICE=cuda, but torch {torch.__version__} sees no CUDA device ({build}); "
                             "use CARECYCLE_DEVICE=auto or cpu, or install a CUDA build of torch")
    return "cpu", f"auto: torch {torch.__version__} sees no CUDA device ({build})"


def _load_model(model_path: str, device: str):
    """Tokenizer and model (float32 on CPU, bfloat16 on CUDA) from a folder or hub id;
    ModelLoadError names what to do."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(model_path)
    is_hub_id = not folder.exists() and _HUB_ID.match(model_path) is not None
    if not is_hub_id and not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"no model at {folder}: run `carecycle model prepare` to create it "
            "(or set CARECYCLE_MODEL to a prepared transformers folder)"
        )
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
    except Exception as exc:  # any loader failure means the same thing to the operator
        raise ModelLoadError(
            f"the model folder {folder} cannot be loaded ({type(exc).__name__}: {exc}); "
            "rebuild it with `carecycle model prepare --force` (or point CARECYCLE_MODEL at a good folder)"
        ) from exc
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"the tokenizer in {folder} has no chat template; carecycle needs a chat model")
    model.eval()
    return tokenizer, model


@dataclass(eq=False)
class _Request:
    """A chat waiting for, or in, a batch; its deltas go to the event loop that asked."""

    input_ids: list[int]
    params: GenerationParams
    generation: Generation
    loop: asyncio.AbstractEventLoop
    deltas: asyncio.Queue
    emitted: bool = False  # some text has been sent
    finished: bool = False  # generation of its row is over
    ended: bool = False  # its end (or error) has been sent

    @property
    def sampling(self) -> tuple[float, float] | None:
        return (self.params.temperature, self.params.top_p) if self.params.temperature > 0 else None

    @property
    def batch_key(self) -> tuple:
        """Requests that may share a batch: same adapter, same sampling (greedy: any limits)."""
        seed = self.params.seed if self.sampling else None
        return self.generation.adapter_version, self.sampling, seed, id(self) if seed is not None else None

    def send(self, item: Any) -> None:
        self.loop.call_soon_threadsafe(self.deltas.put_nowait, item)

    def emit(self, text: str) -> None:
        self.emitted = True
        self.send(text)


class LocalEngine(Engine):
    def __init__(self, model_path: str, model_id: str | None = None, torch_threads: int | None = None,
                 device: str = "auto", max_batch: int = 16, admission_window_s: float = 0.01):
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.device, self.device_reason = select_device(device)
        log.info("embedded engine on %s: %s", self.device, self.device_reason)
        self.tokenizer, self.model = _load_model(model_path, self.device)
        self.model_id = model_id or Path(model_path).name
        self.max_batch = max_batch
        self.admission_window_s = admission_window_s
        self._model_lock = threading.Lock()
        self._adapters_lock = threading.Lock()
        self._adapters: dict[str, str] = {}
        self._weights = MergedWeights()  # the adapter a batch uses is merged into the weights
        self._active: str | None = None
        self._answers = AnswersInFlight()  # an adapter is deleted only once no answer uses it any more
        # the scheduler lives as long as the process: servers that come and go (tests) share one engine
        self._incoming: queue.Queue[_Request] = queue.Queue()
        self._scheduler = threading.Thread(target=self._schedule, name="carecycle-generate", daemon=True)
        self._scheduler.start()

    # -- generation ------------------------------------------------------------------
    def generate(self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = ACTIVE) -> Generation:
        input_ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"][0].tolist()
        deltas: asyncio.Queue = asyncio.Queue()
        generation = Generation(deltas=self._drain(deltas), adapter_version=self._claim(adapter))
        generation.prompt_tokens = len(input_ids)
        self._incoming.put(_Request(input_ids, params, generation, asyncio.get_running_loop(), deltas))
        return generation

    async def _drain(self, deltas: asyncio.Queue):
        while (item := await deltas.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise EngineUnavailableError(f"the model failed while answering: {item}") from item
            yield item

    def _schedule(self) -> None:
        """The scheduler thread: batch what is waiting, oldest request's kind first."""
        waiting: list[_Request] = []
        while True:
            if not waiting:
                waiting.append(self._incoming.get())
                self._admit(waiting)
            while not self._incoming.empty():
                waiting.append(self._incoming.get())
            key = waiting[0].batch_key
            batch = [r for r in waiting if r.batch_key == key][: self.max_batch]
            waiting = [r for r in waiting if r not in batch]
            try:
                self._run_batch(batch)
            except Exception:  # the scheduler must outlive any one batch, or every later chat would hang
                log.exception("a batch of %d chats failed outside generation", len(batch))

    def _admit(self, waiting: list[_Request]) -> None:
        """Requests that arrive together are generated together: after an idle spell, admit
        arrivals while each comes within the admission window of the one before (at most ten
        windows in all, or max_batch requests)."""
        deadline = time.monotonic() + 10 * self.admission_window_s
        while len(waiting) < self.max_batch:
            timeout = min(self.admission_window_s, deadline - time.monotonic())
            if timeout <= 0:
                return
            try:
                waiting.append(self._incoming.get(timeout=timeout))
            except queue.Empty:
                return

    def _run_batch(self, batch: list[_Request]) -> None:
        """Generate ``batch``; if it fails as a whole, each row that has sent nothing yet runs
        again alone, so that a failure stays with the request it belongs to."""
        failure: Exception | None = None
        try:
            self._generate_rows(batch)
        except Exception as exc:  # delivered to the awaiting requests, never lost in a thread
            failure = exc
        retry = [r for r in batch if not (r.finished or r.emitted)] if failure and len(batch) > 1 else []
        for request in batch:
            if request not in retry:
                self._end(request, _DONE if request.finished else failure)
        for request in retry:
            self._run_batch([request])

    def _generate_rows(self, batch: list[_Request]) -> None:
        import torch

        from serve.batch_generation import StreamRow, stream_batch

        rows = [
            StreamRow(r.input_ids, r.params.max_tokens, r.generation.cancelled, emit=r.emit,
                      finish=lambda generated, hit_eos, request=r: self._row_finished(request, generated, hit_eos))
            for r in batch
        ]
        head = batch[0]
        with self._model_lock:
            if head.sampling and head.params.seed is not None:
                torch.manual_seed(head.params.seed)
            with self._using(head.generation.adapter_version) as model:
                stream_batch(model, self.tokenizer, rows, self._eos_ids(), head.sampling)

    def _row_finished(self, request: _Request, generated: int, hit_eos: bool) -> None:
        """A row is done (the batch may go on): end its stream now, unless its adapter waits to
        be unloaded; then the end waits until the adapter has gone (see ``_end``)."""
        generation = request.generation
        generation.completion_tokens = generated
        generation.finish_reason = "length" if generated >= request.params.max_tokens and not hit_eos else "stop"
        request.finished = True
        with self._adapters_lock:
            unloading = self._answers.unloading(generation.adapter_version)
        if not unloading:
            request.send(_DONE)
            request.ended = True

    def _end(self, request: _Request, outcome: Any) -> None:
        """After its batch: release the request's adapter (it may go now), then end its stream."""
        self._release(request.generation.adapter_version)
        if not request.ended:
            request.send(outcome)
            request.ended = True

    def _claim(self, adapter: str | None) -> str | None:
        """The adapter this request will use, counted as in flight until ``_release``."""
        with self._adapters_lock:
            version = self._active if adapter == ACTIVE else adapter
            if version is not None and version not in self._adapters:
                raise AdapterError(f"adapter version {version!r} is not loaded")
            self._answers.claim(version)
            return version

    def _release(self, version: str | None) -> None:
        with self._adapters_lock:
            idle = self._answers.release(version)
        if idle:
            self._delete_if_unused(version)

    @contextmanager
    def _using(self, adapter: str | None):
        """The model computing with ``adapter`` merged into its weights (None: the base model);
        callers hold the model lock, since the switch is model-wide."""
        if not self._adapters:  # no adapter loaded: a plain transformers model
            yield self.model
            return
        self._weights.hold(self.model, adapter)
        if adapter is None:  # no adapter's LoRA branch either
            with self.model.disable_adapter():
                yield self.model
            return
        yield self.model

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        return {i for i in ids if i is not None} | {self.tokenizer.eos_token_id}

    async def answer_many(self, conversations: list[list[dict[str, str]]], max_new_tokens: int,
                          adapter: str | None = None) -> list[str]:
        return await asyncio.to_thread(self.generate_batch, conversations, max_new_tokens, adapter)

    def generate_batch(self, conversations: list[list[dict[str, str]]], max_new_tokens: int,
                       adapter: str | None = None) -> list[str]:
        """Greedy answers to many conversations in one batched call (evaluation, sampling),
        with ``adapter`` (None: the base model), taking its turn with live chats."""
        from serve.batch_generation import generate_batch

        with self._model_lock, self._using(adapter) as model:
            return generate_batch(model, self.tokenizer, conversations, max_new_tokens)

    # -- adapters --------------------------------------------------------------------
    @property
    def active_adapter(self) -> str | None:
        return self._active

    def load_adapter(self, version: str, path: str) -> None:
        from peft import PeftModel

        # the model is shared with running generations: change it only between batches
        with self._model_lock:
            with self._adapters_lock:
                if version in self._adapters:
                    raise AdapterError(f"adapter version {version!r} was already loaded; versions are never reused")
            self._weights.hold(self.model, None)  # layers peft adds now start from the base weights
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(path, adapter_name=version)
                else:
                    self.model = PeftModel.from_pretrained(self.model, path, adapter_name=version)
            except Exception as exc:
                raise AdapterError(f"cannot load adapter {version!r} from {path}: {exc}") from exc
            if why := unmergeable(self.model, version):
                self._delete(version)
                raise AdapterError(f"cannot serve adapter {version!r} from {path}: {why}; the embedded engine "
                                   "serves plain LoRA adapters merged into the weights (retrain it without that option)")
            with self._adapters_lock:
                self._adapters[version] = path

    def activate_adapter(self, version: str | None) -> None:
        with self._adapters_lock:
            self._answers.activated(version, self._adapters)
            self._active = version

    def unload_adapter(self, version: str) -> None:
        """Free an adapter; while answers still use it, it goes when the last one ends."""
        with self._adapters_lock:
            idle = self._answers.unload_when_idle(version, self._adapters, self._active)
        if idle:
            self._delete_if_unused(version)

    def _delete_if_unused(self, version: str) -> None:
        """Delete an adapter marked for unloading once no answer uses it (checked again here,
        under both locks: a request may have claimed it, or it may be active again)."""
        with self._model_lock, self._adapters_lock:
            if not self._answers.may_unload(version) or version not in self._adapters:
                return
            self._delete(version)
            del self._adapters[version]
            self._answers.unloaded(version)

    def _delete(self, version: str) -> None:
        """Remove ``version`` from the peft model (callers hold the model lock); without any
        adapter left, the model is the plain base model again."""
        self._weights.forget(self.model, version)
        self.model.delete_adapter(version)
        if not self.model.peft_config:  # the last one: peft would keep pointing at the deleted name
            self.model = self.model.unload()
            self._weights = MergedWeights()

    def loaded_adapters(self) -> list[str]:
        return list(self._adapters)

    def health(self) -> dict[str, Any]:
        if self.model is None:
            raise EngineUnavailableError("the local model is not loaded")
        return {"engine": "local", "model": self.model_id, "adapter": self._active, "adapters": self.loaded_adapters(),
                "device": self.device, "device_reason": self.device_reason}
