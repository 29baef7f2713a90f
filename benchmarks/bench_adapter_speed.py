"""Serving through an adapter on the embedded engine: base model vs adapter merged vs unmerged.

Usage: .venv/bin/python benchmarks/bench_adapter_speed.py [--max-tokens 48] [--chats 4]
       [--rounds 3] [--threads 1] [--models tiny smollm2] [--device cpu|cuda|auto]

For each model (the tiny random Llama of the tests; SmolLM2-135M-Instruct when
data/models/SmolLM2-135M-Instruct exists) and a LoRA adapter shaped as training makes them
(r 16, alpha 32, every attention and MLP projection; small random weights, so that the answers
stay close to the base model's and every way generates about as many tokens), ``--chats``
greedy chats are answered one at a time, three ways, in the same run, the ways taking turns
chat by chat in rotating order (so that they share a loaded machine's ups and downs alike):

- base: a LocalEngine serving the base model, no adapter loaded (the baseline);
- merged: a LocalEngine serving the adapter (engine.adapters.activate), which merges it into
  the weights;
- unmerged: peft's LoRA branch on every adapted layer (what the engine did before), the same
  batch code (serve.batch_generation.stream_batch) on a PeftModel.

Prints tokens/s of each and the ratio to the base model (target, issue 14: merged >= 0.9x),
whether merged and unmerged greedy answers agree, and what a switch costs (merging the adapter
afresh; back to the base model; back to the adapter the merged copy holds).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bench_concurrent_chats import SMOLLM2, conversations  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--chats", type=int, default=4, help="chats per way and round, one at a time")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine has 2 shared cores)")
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"])
    parser.add_argument("--device", default="cpu", help="the engine's device: cpu, cuda or auto (CARECYCLE_DEVICE)")
    return parser.parse_args()


def make_adapter(model_dir: Path, folder: Path) -> Path:
    """A LoRA adapter as training shapes it, with small random weights (a trained adapter's
    delta is small too)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from retrain.training.config import LLAMA_PROJECTIONS

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                           LoraConfig(r=16, lora_alpha=32, target_modules=LLAMA_PROJECTIONS))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 1e-3)
    model.save_pretrained(folder)
    return folder


def through_engine(engine, messages, max_tokens, adapter) -> tuple[float, int, str]:
    """(seconds, tokens, answer) of one chat answered by ``engine``."""
    from serve.engine import GenerationParams

    params = GenerationParams(max_tokens=max_tokens, temperature=0.0)

    async def run():
        generation = engine.generate(messages, params, adapter=adapter)
        return "".join([delta async for delta in generation]), generation.completion_tokens

    started = time.perf_counter()
    answer, tokens = asyncio.run(run())
    return time.perf_counter() - started, tokens, answer


def through_peft(model, tokenizer, eos_ids, messages, max_tokens) -> tuple[float, int, str]:
    """The same on peft's unmerged LoRA, with the engine's batch code (a batch of one)."""
    from serve.batch_generation import StreamRow, stream_batch

    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"][0].tolist()
    parts, counted = [], []
    row = StreamRow(ids, max_tokens, threading.Event(), emit=parts.append,
                    finish=lambda generated, hit_eos: counted.append(generated))
    started = time.perf_counter()
    stream_batch(model, tokenizer, [row], eos_ids)
    return time.perf_counter() - started, counted[0], "".join(parts)


def switch_costs(engine, version: str) -> dict[str, float]:
    """Seconds to merge ``version`` afresh, to go back to the base weights, and to come back to
    the version the merged copy holds (the engine's model lock held, as between batches)."""
    weights, timings = engine._weights, {}
    with engine._model_lock:
        weights.hold(engine.model, None)
        weights._merged_version = None  # forget what the merged copy holds: the next hold merges afresh
        for label, target in (("merge afresh", version), ("back to base", None), ("back to the merged", version)):
            started = time.perf_counter()
            weights.hold(engine.model, target)
            timings[label] = time.perf_counter() - started
    return timings


def bench(name: str, model_dir: Path, scratch: Path, args: argparse.Namespace) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from serve.adapters import AdapterRef
    from serve.local_engine import LocalEngine

    base_engine = LocalEngine(str(model_dir), torch_threads=args.threads, device=args.device)  # no adapter
    engine = LocalEngine(str(model_dir), torch_threads=args.threads, device=args.device)
    adapter = AdapterRef("bench-1", str(make_adapter(model_dir, scratch / f"{name}-adapter")))
    engine.adapters.activate(adapter)
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=engine.model.dtype).to(engine.model.device)
    peft_model = PeftModel.from_pretrained(plain, adapter.path).eval()
    eos_ids = engine._eos_ids()
    ways = {"base": lambda chat: through_engine(base_engine, chat, args.max_tokens, None),
            "merged": lambda chat: through_engine(engine, chat, args.max_tokens, adapter.version),
            "unmerged": lambda chat: through_peft(peft_model, engine.tokenizer, eos_ids, chat, args.max_tokens)}
    chats = conversations(args.chats)
    for way in ways.values():  # warm-up (the merged engine merges the adapter here)
        way(chats[0])
    figures: dict[str, list[tuple[float, int, str]]] = {way: [] for way in ways}
    turn = 0
    for _ in range(args.rounds):
        for chat in chats:  # the ways take turns chat by chat, first in rotation: they share the load alike
            for way in list(ways)[turn % 3:] + list(ways)[:turn % 3]:
                figures[way].append(ways[way](chat))
            turn += 1
    rates = {way: sum(t for _, t, _ in runs) / sum(s for s, _, _ in runs) for way, runs in figures.items()}
    agree = sum(m == u for (_, _, m), (_, _, u) in zip(figures["merged"], figures["unmerged"]))
    print(f"{name}: {args.chats} chats x {args.rounds} rounds one at a time, the ways in turn; max_tokens "
          f"{args.max_tokens}, {args.threads} torch thread(s), {engine.device}; load average {os.getloadavg()[0]:.1f}")
    for way, rate in rates.items():
        print(f"  {way:<9} {rate:8.1f} tokens/s (x{rate / rates['base']:.2f} the base model)")
    print(f"  merged and unmerged greedy answers equal: {agree}/{args.chats * args.rounds}")
    costs = switch_costs(engine, adapter.version)
    print("  switch: " + ", ".join(f"{label} {seconds * 1000:.1f} ms" for label, seconds in costs.items()))
    engine.close()
    base_engine.close()


def main() -> None:
    args = parse_args()
    from tests.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        if "tiny" in args.models:
            bench("tiny random Llama", build_tiny_model(scratch / "tiny"), scratch, args)
        if "smollm2" in args.models:
            if (SMOLLM2 / "config.json").is_file():
                bench("SmolLM2-135M-Instruct", SMOLLM2, scratch, args)
            else:
                print(f"no SmolLM2 at {SMOLLM2}: run `carecycle model prepare` to include it")


if __name__ == "__main__":
    main()
