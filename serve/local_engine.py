"""LocalEngine: transformers + peft inside the server process (the embedded default).

Generation is serialised by one lock: there is one model instance, peft's ``set_adapter``
switches the whole model, and on a small CPU two concurrent ``generate`` calls only
contend for the same cores. Requests wait their turn in arrival order; each keeps the
adapter that was active when it arrived, so a promotion never changes an answer in flight.
Batched generation for evaluation lives with the evaluation runner.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from serve.engine import ACTIVE, Engine, Generation, GenerationParams
from serve.errors import AdapterError, EngineUnavailableError, ModelLoadError

_DONE = object()
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _load_model(model_path: str):
    """Tokenizer and float32 model from a folder or hub id; ModelLoadError names what to do."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(model_path)
    is_hub_id = not folder.exists() and _HUB_ID.match(model_path) is not None
    if not is_hub_id and not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"no model at {folder}: run `carecycle model prepare` to create it "
            "(or set CARECYCLE_MODEL to a prepared transformers folder)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except Exception as exc:  # any loader failure means the same thing to the operator
        raise ModelLoadError(
            f"the model folder {folder} cannot be loaded ({type(exc).__name__}: {exc}); "
            "rebuild it with `carecycle model prepare --force` (or point CARECYCLE_MODEL at a good folder)"
        ) from exc
    if tokenizer.chat_template is None:
        raise ModelLoadError(f"the tokenizer in {folder} has no chat template; carecycle needs a chat model")
    model.eval()
    return tokenizer, model


class _TokenStreamer:
    """transformers' streamer protocol, emitting the new text after every token (TextStreamer
    holds text back to word boundaries). Text that ends in an incomplete UTF-8 sequence waits
    for the token that completes it."""

    def __init__(self, tokenizer, emit):
        self.tokenizer = tokenizer
        self.emit = emit
        self.tokens: list[int] = []
        self.sent = 0
        self.prompt_skipped = False

    def put(self, value) -> None:
        if not self.prompt_skipped:  # generate() first hands over the prompt
            self.prompt_skipped = True
            return
        self.tokens.extend(value.reshape(-1).tolist())
        self._flush(final=False)

    def end(self) -> None:
        self._flush(final=True)

    def _flush(self, final: bool) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if (final or not text.endswith("\ufffd")) and len(text) > self.sent:
            self.emit(text[self.sent:])
            self.sent = len(text)


class LocalEngine(Engine):
    def __init__(self, model_path: str, model_id: str | None = None, torch_threads: int | None = None):
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.tokenizer, self.model = _load_model(model_path)
        self.model_id = model_id or Path(model_path).name
        self._generate_lock = threading.Lock()
        self._adapters_lock = threading.Lock()
        self._adapters: dict[str, str] = {}
        self._active: str | None = None
        # answers in flight per adapter: an adapter is deleted only once none uses it any more
        self._in_flight: Counter[str] = Counter()
        self._unload_when_idle: set[str] = set()

    # -- generation ------------------------------------------------------------------
    def generate(self, messages: list[dict[str, str]], params: GenerationParams, adapter: str | None = ACTIVE) -> Generation:
        input_ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue = asyncio.Queue()
        generation = Generation(deltas=self._drain(deltas), adapter_version=self._claim(adapter))
        generation.prompt_tokens = int(input_ids.shape[1])
        worker = threading.Thread(
            target=self._run,
            args=(input_ids, params, generation, loop, deltas),
            name="carecycle-generate",
            daemon=True,
        )
        worker.start()
        return generation

    async def _drain(self, deltas: asyncio.Queue):
        while (item := await deltas.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise EngineUnavailableError(f"the model failed while answering: {item}") from item
            yield item

    def _run(self, input_ids, params: GenerationParams, generation: Generation, loop, deltas) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class StopWhenCancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:
                return generation.cancelled.is_set()

        streamer = _TokenStreamer(self.tokenizer, lambda text: loop.call_soon_threadsafe(deltas.put_nowait, text))
        stopping = StoppingCriteriaList([StopWhenCancelled()])
        try:
            with self._generate_lock:
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                output = self._generate_with_adapter(generation.adapter_version, input_ids, params, streamer, stopping)
            new_tokens = output[0, input_ids.shape[1]:]
            generation.completion_tokens = int(new_tokens.shape[0])
            hit_eos = bool(new_tokens.numel()) and int(new_tokens[-1]) in self._eos_ids()
            generation.finish_reason = "length" if generation.completion_tokens >= params.max_tokens and not hit_eos else "stop"
            outcome = _DONE
        except BaseException as exc:  # delivered to the awaiting request, never lost in a thread
            outcome = exc
        finally:
            self._release(generation.adapter_version)  # before the answer ends: its adapter may go now
        loop.call_soon_threadsafe(deltas.put_nowait, outcome)

    def _claim(self, adapter: str | None) -> str | None:
        """The adapter this request will use, counted as in flight until ``_release``."""
        with self._adapters_lock:
            version = self._active if adapter == ACTIVE else adapter
            if version is not None and version not in self._adapters:
                raise AdapterError(f"adapter version {version!r} is not loaded")
            if version is not None:
                self._in_flight[version] += 1
            return version

    def _release(self, version: str | None) -> None:
        if version is None:
            return
        with self._adapters_lock:
            self._in_flight[version] -= 1
            if self._in_flight[version] == 0 and version in self._unload_when_idle:
                self._delete(version)

    def _generate_with_adapter(self, adapter: str | None, input_ids, params: GenerationParams, streamer, stopping):
        import torch

        sampling = params.temperature > 0
        kwargs: dict[str, Any] = dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=params.max_tokens,
            do_sample=sampling,
            streamer=streamer,
            stopping_criteria=stopping,
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
        if sampling:
            kwargs.update(temperature=params.temperature, top_p=params.top_p)
        with torch.inference_mode(), self._using(adapter) as model:
            return model.generate(**kwargs)

    @contextmanager
    def _using(self, adapter: str | None):
        """The model with ``adapter`` switched on (None: the base model); callers hold the
        generate lock, since peft switches adapters model-wide."""
        if adapter is None and hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                yield self.model
            return
        if adapter is not None:
            self.model.set_adapter(adapter)
        yield self.model

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        return {i for i in ids if i is not None} | {self.tokenizer.eos_token_id}

    def generate_batch(self, conversations: list[list[dict[str, str]]], max_new_tokens: int,
                       adapter: str | None = None) -> list[str]:
        """Greedy answers to many conversations in one batched call (evaluation, sampling),
        with ``adapter`` (None: the base model), taking its turn with live chats."""
        from serve.batch_generation import generate_batch

        with self._generate_lock, self._using(adapter) as model:
            return generate_batch(model, self.tokenizer, conversations, max_new_tokens)

    # -- adapters --------------------------------------------------------------------
    @property
    def active_adapter(self) -> str | None:
        return self._active

    def load_adapter(self, version: str, path: str) -> None:
        from peft import PeftModel

        with self._adapters_lock:
            if version in self._adapters:
                raise AdapterError(f"adapter version {version!r} was already loaded; versions are never reused")
            # the model is shared with running generations: change it only between them
            with self._generate_lock:
                try:
                    if isinstance(self.model, PeftModel):
                        self.model.load_adapter(path, adapter_name=version)
                    else:
                        self.model = PeftModel.from_pretrained(self.model, path, adapter_name=version)
                except Exception as exc:
                    raise AdapterError(f"cannot load adapter {version!r} from {path}: {exc}") from exc
            self._adapters[version] = path

    def activate_adapter(self, version: str | None) -> None:
        with self._adapters_lock:
            if version is not None and version not in self._adapters:
                raise AdapterError(f"adapter version {version!r} is not loaded; load it first")
            self._unload_when_idle.discard(version)
            self._active = version

    def unload_adapter(self, version: str) -> None:
        """Free an adapter; while answers still use it, it goes when the last one ends."""
        with self._adapters_lock:
            if version not in self._adapters:
                raise AdapterError(f"adapter version {version!r} is not loaded")
            if version == self._active:
                raise AdapterError(f"adapter version {version!r} is active; activate another one first")
            if self._in_flight[version]:
                self._unload_when_idle.add(version)
            else:
                self._delete(version)

    def _delete(self, version: str) -> None:
        """Callers hold the adapters lock."""
        with self._generate_lock:
            self.model.delete_adapter(version)
            if len(self._adapters) == 1:  # the last one: peft would keep pointing at the deleted name
                self.model = self.model.unload()
        del self._adapters[version]
        self._unload_when_idle.discard(version)

    def loaded_adapters(self) -> list[str]:
        return list(self._adapters)

    def health(self) -> dict[str, Any]:
        if self.model is None:
            raise EngineUnavailableError("the local model is not loaded")
        return {"engine": "local", "model": self.model_id, "adapter": self._active, "adapters": self.loaded_adapters()}
