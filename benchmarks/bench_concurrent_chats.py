"""Concurrent chats on the embedded engine: batched together vs one at a time, same process.

Usage: .venv/bin/python benchmarks/bench_concurrent_chats.py [--chats 16] [--max-tokens 32]
       [--threads 1] [--rounds 2] [--models tiny smollm2] [--device cpu|cuda|auto]

For each model (the tiny random Llama of the tests; SmolLM2-135M-Instruct when
data/models/SmolLM2-135M-Instruct exists) one LocalEngine answers ``--chats`` greedy chats
(different medical questions, base model, ``--max-tokens`` each) three ways, in the same run:

- one at a time (the baseline): each chat starts when the previous one has ended;
- all at once with batching off (``max_batch`` 1: the engine as it was, one answer after
  another behind one lock), which shows what the last arrival waits for its first token;
- all at once with batching on (the default: they share one batch).

Prints aggregate tokens/s (all tokens generated / wall time), the ratio to one at a time,
median and worst time to first token, whether the greedy answers agree with the one-at-a-time
answers, and the load average. Target (issue 14): >= 4x the one-at-a-time tokens/s at 16 chats.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = REPO / "data" / "models" / "SmolLM2-135M-Instruct"
SYMPTOMS = ["a fever", "a dry cough", "back pain", "a headache", "a rash", "high blood pressure", "insomnia", "nausea"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chats", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine has 2 shared cores)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["tiny", "smollm2"])
    parser.add_argument("--device", default="cpu", help="the engine's device: cpu, cuda or auto (CARECYCLE_DEVICE)")
    return parser.parse_args()


def conversations(count: int) -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": "You are a careful medical assistant for a clinic."},
             {"role": "user", "content": f"Patient {i} has had {SYMPTOMS[i % len(SYMPTOMS)]} for {i % 5 + 1} days. "
                                         "What should they do?"}] for i in range(count)]


async def one_chat(engine, messages, params) -> tuple[float, int, str]:
    """(seconds to the first text, tokens generated, answer)."""
    started = time.perf_counter()
    generation = engine.generate(messages, params, adapter=None)
    first, parts = None, []
    async for delta in generation:
        first = first or time.perf_counter()
        parts.append(delta)
    return (first or time.perf_counter()) - started, generation.completion_tokens, "".join(parts)


async def one_at_a_time(engine, chats, params):
    return [await one_chat(engine, messages, params) for messages in chats]


async def all_at_once(engine, chats, params):
    return await asyncio.gather(*(one_chat(engine, messages, params) for messages in chats))


def timed(run) -> tuple[float, list[tuple[float, int, str]]]:
    started = time.perf_counter()
    results = asyncio.run(run)
    return time.perf_counter() - started, results


def bench(name: str, model_dir: Path, args: argparse.Namespace) -> None:
    from serve.engine import GenerationParams
    from serve.local_engine import LocalEngine

    engine = LocalEngine(str(model_dir), torch_threads=args.threads, device=args.device)
    params = GenerationParams(max_tokens=args.max_tokens, temperature=0.0)
    chats = conversations(args.chats)
    asyncio.run(all_at_once(engine, chats[:2], params))  # warm-up
    window = engine.admission_window_s  # the baseline pays no admission window
    ways = {"one at a time": (1, 0.0, one_at_a_time), "all at once, batching off": (1, 0.0, all_at_once),
            "all at once, batched": (args.chats, window, all_at_once)}
    figures: dict[str, list[tuple[float, list]]] = {way: [] for way in ways}
    for round_index in range(args.rounds):
        order = list(ways) if round_index % 2 == 0 else list(reversed(ways))
        for way in order:
            engine.max_batch, engine.admission_window_s, run = ways[way]
            figures[way].append(timed(run(engine, chats, params)))
    reference = [answer for _, _, answer in figures["one at a time"][0][1]]
    baseline = _tokens_per_s(figures["one at a time"])
    print(f"{name}: {args.chats} chats, max_tokens {args.max_tokens}, {args.threads} torch thread(s), "
          f"{args.rounds} rounds; load average {os.getloadavg()[0]:.1f}")
    for way, runs in figures.items():
        rate = _tokens_per_s(runs)
        ttfts = [ttft for _, results in runs for ttft, _, _ in results]
        agree = sum(a == r for _, results in runs for (_, _, a), r in zip(results, reference))
        print(f"  {way:<26} {rate:8.1f} tokens/s (x{rate / baseline:.2f}), TTFT median {statistics.median(ttfts):6.2f} s, "
              f"worst {max(ttfts):6.2f} s; greedy answers equal to one at a time: {agree}/{len(ttfts)}")
    engine.close()


def _tokens_per_s(runs: list[tuple[float, list]]) -> float:
    tokens = sum(count for _, results in runs for _, count, _ in results)
    return tokens / sum(wall for wall, _ in runs)


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(REPO))
    from tests.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as scratch:
        if "tiny" in args.models:
            bench("tiny random Llama", build_tiny_model(Path(scratch) / "tiny"), args)
        if "smollm2" in args.models:
            if (SMOLLM2 / "config.json").is_file():
                bench("SmolLM2-135M-Instruct", SMOLLM2, args)
            else:
                print(f"no SmolLM2 at {SMOLLM2}: run `carecycle model prepare` to include it")


if __name__ == "__main__":
    main()
