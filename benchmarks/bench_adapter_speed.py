"""Serving through an adapter on the embedded engine: base model vs adapter merged vs unmerged.

Usage: .venv/bin/python benchmarks/bench_adapter_speed.py [--max-tokens 48] [--chats 4]
       [--rounds 3] [--threads 1] [--models tiny smollm2] [--device cpu|cuda|auto]

For each model (the tiny random Llama of the tests; SmolLM2-135M-Instruct when
data/models/SmolLM2-135M-Instruct exists) and a LoRA adapter shaped as training makes them
(r 16, alpha 32, every attention and MLP projection; small random weights, so that the answers
stay close to the base model's and every way generates about as many tokens), ``--chats``
greedy chats are answered one at a time, three ways, in the same run and in alternating order:

- base: LocalEngine serving the base model, no adapter loaded (the baseline);
- merged: the same LocalEngine serving the adapter (engine.adapters.activate), which merges it
  into the weights;
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


def through_engine(engine, chats, max_tokens, adapter) -> tuple[float, int, list[str]]:
    """(seconds, tokens, answers) of ``chats`` answered one at a time by ``engine``."""
    from serve.engine import GenerationParams

    params = GenerationParams(max_tokens=max_tokens, temperature=0.0)

    async def run():
        tokens, answers = 0, []
        for messages in chats:
            generation = engine.generate(messages, params, adapter=adapter)
            answers.append("".join([delta async for delta in generation]))
            tokens += generation.completion_tokens
        return tokens, answers

    started = time.perf_counter()
    tokens, answers = asyncio.run(run())
    return time.perf_counter() - started, tokens, answers


def through_peft(model, tokenizer, eos_ids, chats, max_tokens) -> tuple[float, int, list[str]]:
    """The same, on peft's unmerged LoRA with the engine's batch code (one row per batch)."""
    from serve.batch_generation import StreamRow, stream_batch

    started, tokens, answers = time.perf_counter(), 0, []
    for messages in chats:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"][0].tolist()
        parts, counted = [], []
        row = StreamRow(ids, max_tokens, threading.Event(), emit=parts.append,
                        finish=lambda generated, hit_eos: counted.append(generated))
        stream_batch(model, tokenizer, [row], eos_ids)
        tokens += counted[0]
        answers.append("".join(parts))
    return time.perf_counter() - started, tokens, answers


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

    engine = LocalEngine(str(model_dir), torch_threads=args.threads, device=args.device)
    adapter = AdapterRef("bench-1", str(make_adapter(model_dir, scratch / f"{name}-adapter")))
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=engine.model.dtype).to(engine.model.device)
    peft_model = PeftModel.from_pretrained(plain, adapter.path).eval()
    chats = conversations(args.chats)
    eos_ids = engine._eos_ids()

    def base():
        engine.adapters.activate(None)  # unloads the adapter: the plain base model
        return through_engine(engine, chats, args.max_tokens, None)

    def merged():
        engine.adapters.activate(adapter)
        through_engine(engine, chats[:1], 1, adapter.version)  # the first batch merges it (timed below)
        return through_engine(engine, chats, args.max_tokens, adapter.version)

    ways = {"base": base, "merged": merged,
            "unmerged": lambda: through_peft(peft_model, engine.tokenizer, eos_ids, chats, args.max_tokens)}
    for way in ways.values():  # warm-up
        way()
    figures: dict[str, list[tuple[float, int, list[str]]]] = {way: [] for way in ways}
    for round_index in range(args.rounds):
        for way in list(ways) if round_index % 2 == 0 else list(reversed(ways)):
            figures[way].append(ways[way]())
    rates = {way: sum(t for _, t, _ in runs) / sum(s for s, _, _ in runs) for way, runs in figures.items()}
    agree = sum(a == b for (_, _, x), (_, _, y) in zip(figures["merged"], figures["unmerged"]) for a, b in zip(x, y))
    print(f"{name}: {args.chats} chats x {args.rounds} rounds one at a time, max_tokens {args.max_tokens}, "
          f"{args.threads} torch thread(s); load average {os.getloadavg()[0]:.1f}")
    for way, rate in rates.items():
        print(f"  {way:<9} {rate:8.1f} tokens/s (x{rate / rates['base']:.2f} the base model)")
    print(f"  merged and unmerged greedy answers equal: {agree}/{args.chats * args.rounds}")
    engine.adapters.activate(adapter)
    costs = switch_costs(engine, adapter.version)
    print("  switch: " + ", ".join(f"{label} {seconds * 1000:.1f} ms" for label, seconds in costs.items()))
    engine.close()


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
