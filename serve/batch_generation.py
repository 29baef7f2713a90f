"""Answer many conversations at once: batched greedy generation, or many requests in flight.

``generate_batch`` pads on the left so that every row's answer starts at the same position,
and decodes only the new tokens. It works on a plain transformers causal LM and on a peft
model; with ``adapter_names`` (peft's mixed-batch LoRA) each row can use its own adapter
("__base__" for none), so one batch can compare the active adapter and candidates.
``generate_many`` is for engines without a batch call (e.g. vLLM, which batches requests
in flight itself).
"""

from __future__ import annotations

import asyncio
from typing import Any

Conversation = list[dict[str, str]]


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
