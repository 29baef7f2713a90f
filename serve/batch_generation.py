"""Answer many conversations at once: batched greedy generation, or many requests in flight.

``generate_batch`` pads on the left so that every row's answer starts at the same position,
and decodes only the new tokens. It works on a plain transformers causal LM and on a peft
model; with ``adapter_names`` (peft's mixed-batch LoRA) each row can use its own adapter
("__base__" for none), so one batch can compare the active adapter and candidates.
``stream_batch`` is the same padded batch for live chats: each row streams its own text,
stops at its own end (end of sequence, its own token limit, or its client gone) and is
reported finished at once, while the other rows go on. ``generate_many`` is for engines
without a batch call (e.g. vLLM, which batches requests in flight itself).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Conversation = list[dict[str, str]]


@dataclass
class StreamRow:
    """One live request in a streamed batch."""

    input_ids: list[int]
    max_tokens: int
    cancelled: threading.Event
    emit: Callable[[str], None]  # the next piece of text
    finish: Callable[[int, bool], None]  # once: (tokens generated, ended by end of sequence)
    tokens: list[int] = field(default_factory=list)
    sent_chars: int = 0
    done: bool = False


def stream_batch(model: Any, tokenizer: Any, rows: list[StreamRow], eos_ids: set[int],
                 sampling: tuple[float, float] | None = None) -> None:
    """Generate ``rows`` as one left-padded batch on ``model`` (greedy, or sampling with
    (temperature, top_p)); every row is finished by the time this returns."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    width = max(len(row.input_ids) for row in rows)
    pad = _pad_token_id(tokenizer)
    input_ids = torch.tensor([[pad] * (width - len(r.input_ids)) + r.input_ids for r in rows], device=model.device)
    attention_mask = torch.tensor([[0] * (width - len(r.input_ids)) + [1] * len(r.input_ids) for r in rows],
                                  device=model.device)
    limits = torch.tensor([row.max_tokens for row in rows], device=model.device)

    class RowEnded(StoppingCriteria):  # per row: its own token limit, or its client gone
        def __call__(self, ids, scores, **kwargs):
            gone = torch.tensor([row.cancelled.is_set() for row in rows], device=ids.device)
            return (ids.shape[1] - width >= limits) | gone

    options = (dict(do_sample=True, temperature=sampling[0], top_p=sampling[1]) if sampling
               else dict(do_sample=False, temperature=None, top_p=None, top_k=None))
    streamer = _RowStreamer(tokenizer, rows, eos_ids)
    with torch.inference_mode():
        model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=int(limits.max()),
                       streamer=streamer, stopping_criteria=StoppingCriteriaList([RowEnded()]),
                       pad_token_id=pad, **options)
    streamer.end()


class _RowStreamer:
    """transformers' streamer protocol for a batch: hands each row's new text to that row after
    every token (text that ends in an incomplete UTF-8 sequence waits for the token that
    completes it) and finishes a row at its end of sequence, token limit or cancellation."""

    def __init__(self, tokenizer: Any, rows: list[StreamRow], eos_ids: set[int]):
        self.tokenizer, self.rows, self.eos_ids = tokenizer, rows, eos_ids
        self.prompt_skipped = False

    def put(self, value) -> None:
        if not self.prompt_skipped:  # generate() first hands over the prompt
            self.prompt_skipped = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist()):
            if row.done:
                continue
            if token in self.eos_ids:
                self._finish(row, len(row.tokens) + 1, hit_eos=True)
                continue
            row.tokens.append(token)
            self._flush(row, final=False)
            if len(row.tokens) >= row.max_tokens or row.cancelled.is_set():
                self._finish(row, len(row.tokens), hit_eos=False)

    def end(self) -> None:
        for row in self.rows:
            if not row.done:
                self._finish(row, len(row.tokens), hit_eos=False)

    def _flush(self, row: StreamRow, final: bool) -> None:
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        if (final or not text.endswith("\ufffd")) and len(text) > row.sent_chars:
            row.emit(text[row.sent_chars:])
            row.sent_chars = len(text)

    def _finish(self, row: StreamRow, generated: int, hit_eos: bool) -> None:
        self._flush(row, final=True)
        row.done = True
        row.finish(generated, hit_eos)


def generate_batch(
    model: Any,
    tokenizer: Any,
    conversations: list[Conversation],
    max_new_tokens: int,
    adapter_names: list[str] | None = None,
) -> list[str]:
    """Greedy answers to ``conversations``, in order, with special tokens removed."""
    import torch

    if not conversations:
        return []
    if adapter_names is not None and len(adapter_names) != len(conversations):
        raise ValueError(f"{len(adapter_names)} adapter names for {len(conversations)} conversations")
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    inputs = tokenizer(texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    inputs = inputs.to(model.device)
    options: dict[str, Any] = {"adapter_names": adapter_names} if adapter_names is not None else {}
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            top_p=None,
            top_k=None,
            temperature=None,
            pad_token_id=_pad_token_id(tokenizer),
            **options,
        )
    new_tokens = output[:, inputs["input_ids"].shape[1]:]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def _pad_token_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


async def generate_many(engine: Any, conversations: list[Conversation], params: Any, concurrency: int = 8,
                        adapter: Any = "__active__") -> list[str]:
    """Answers from ``engine.generate`` (the serve.engine contract), ``concurrency`` at a time,
    with ``adapter`` (default: the active one; None: the base model)."""
    gate = asyncio.Semaphore(concurrency)

    async def answer(conversation: Conversation) -> str:
        async with gate:
            return "".join([delta async for delta in engine.generate(conversation, params, adapter=adapter)])

    return list(await asyncio.gather(*(answer(c) for c in conversations)))
