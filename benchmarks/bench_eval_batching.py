"""Batched vs one-by-one greedy generation on the same prompts, in the same process.

Usage: .venv/bin/python benchmarks/bench_eval_batching.py [--prompts 16] [--batch-size 8]
       [--max-new-tokens 16] [--threads 1]

Prompts are the first ones of carecycle-safety's test split. Runs the tiny random Llama of
the tests, then SmolLM2-135M-Instruct when data/models/SmolLM2-135M-Instruct exists (with at
most 8 prompts). Prints the seconds for each way, the speed-up, and how many answers agree.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = REPO / "data" / "models" / "SmolLM2-135M-Instruct"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CI machine has 2 shared cores)")
    return parser.parse_args()


def bench(name: str, model_dir: Path, conversations: list, batch_size: int, max_new_tokens: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from serve.batch_generation import generate_batch

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()  # as LocalEngine loads it
    generate_batch(model, tokenizer, conversations[:1], max_new_tokens)  # warm-up
    start = time.perf_counter()
    single = [generate_batch(model, tokenizer, [c], max_new_tokens)[0] for c in conversations]
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    batched = [
        answer
        for i in range(0, len(conversations), batch_size)
        for answer in generate_batch(model, tokenizer, conversations[i:i + batch_size], max_new_tokens)
    ]
    batched_s = time.perf_counter() - start
    same = sum(a == b for a, b in zip(single, batched))
    print(
        f"{name}: {len(conversations)} prompts, batch {batch_size}, {max_new_tokens} new tokens: "
        f"one-by-one {single_s:.2f} s, batched {batched_s:.2f} s, speed-up x{single_s / batched_s:.2f}, "
        f"identical answers {same}/{len(conversations)}"
    )


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(REPO))
    import torch

    from retrain.evaluation.benchmark import load_benchmark
    from retrain.evaluation.runner import conversation_for
    from tests.tiny_model import build_tiny_model

    torch.set_num_threads(args.threads)
    items = load_benchmark("carecycle-safety", split="test", limit=args.prompts)
    conversations = [conversation_for(item.prompt) for item in items]
    with tempfile.TemporaryDirectory() as folder:
        bench("tiny-llama", build_tiny_model(Path(folder)), conversations, args.batch_size, args.max_new_tokens)
    if SMOLLM2.is_dir():
        bench("SmolLM2-135M", SMOLLM2, conversations[:8], min(args.batch_size, 8), args.max_new_tokens)
    else:
        print(f"SmolLM2 skipped: no model at {SMOLLM2}")


if __name__ == "__main__":
    main()
