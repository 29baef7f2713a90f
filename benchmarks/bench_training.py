"""Training throughput: carecycle's wrapper (`run_training`, a child process) vs a bare TRL script.

    .venv/bin/python -m benchmarks.bench_training                       # tiny random Llama
    .venv/bin/python -m benchmarks.bench_training --model data/models/SmolLM2-135M-Instruct --steps 12

Both run the same rows with the same hyperparameters, each in its own fresh process, alternately.
Both time the training loop with the same callback (`retrain.training.progress.JsonProgress`, one
event per step with tokens seen and seconds since the loop began), so process start, imports, model
loading, tokenization, the first (warm-up) step and saving are outside the window. Other work on a
shared machine stalls single steps, so a run's tokens/s is the window's tokens over (its number of
steps x the median step time). Each side's figure is the median over `--repeats` runs, alternated;
the median of the paired ratios (runs back to back) is printed too. Target: ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from retrain.training import TrainConfig, run_training

WORDS = ("the patient doctor fever cough pain dose tablet ibuprofen paracetamol blood pressure heart sleep water take "
         "call emergency clinic nurse symptom rest hours day week safe help consult medicine allergy child").split()


def write_rows(path: Path, count: int, words: int) -> Path:
    def text(i: int, n: int) -> str:
        return " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(n))

    rows = [{"prompt": [{"role": "user", "content": text(i, words // 3) + "?"}],
             "completion": [{"role": "assistant", "content": text(i + 1, words)}],
             "label": i % 2 == 0, "message_ids": [f"m{i}"]} for i in range(count)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def bare_trl(config_path: Path) -> None:
    """A plain TRL KTO script on the same rows: what the wrapper is compared with."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
    from trl import KTOConfig, KTOTrainer

    from retrain.training.progress import JsonProgress

    c = TrainConfig.from_json(config_path)
    torch.set_num_threads(c.torch_threads)
    dataset = Dataset.from_json(c.dataset).remove_columns(["message_ids"]).shuffle(seed=c.seed)
    args = KTOConfig(
        output_dir=tempfile.mkdtemp(), learning_rate=c.learning_rate, max_steps=c.max_steps, seed=c.seed,
        per_device_train_batch_size=c.per_device_train_batch_size, max_length=c.max_length, beta=c.beta,
        bf16=False, activation_checkpointing=False, report_to="none", logging_steps=1, save_strategy="no",
        disable_tqdm=True,
    )
    lora = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                      target_modules=c.target_modules, task_type="CAUSAL_LM")
    model = AutoModelForCausalLM.from_pretrained(c.base_model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(c.base_model)
    trainer = KTOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora,
                         callbacks=[JsonProgress()])
    trainer.remove_callback(PrinterCallback)
    trainer.train()


def tokens_per_s(events: list[dict]) -> float:
    steps = [e for e in events if e.get("event") == "progress"]
    durations = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps, steps[1:])]
    return (steps[-1]["tokens"] - steps[0]["tokens"]) / (len(durations) * statistics.median(durations))


def run_wrapper(config: TrainConfig) -> tuple[float, float]:
    events: list[dict] = []
    started = time.perf_counter()
    result = run_training(config, on_progress=events.append)
    if result.status != "ok":
        sys.exit(f"wrapper run failed: {result.reason}\n{result.stderr_tail}")
    return tokens_per_s(events), time.perf_counter() - started


def run_bare(config_path: Path) -> tuple[float, float]:
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_training", "--bare", str(config_path)],
                         capture_output=True, text=True, check=True).stdout
    events = [json.loads(line) for line in out.splitlines() if line.startswith('{"event"')]
    return tokens_per_s(events), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="base model folder (default: a tiny random Llama)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--words", type=int, default=40, help="words per completion (prompt: a third)")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bare", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        return bare_trl(args.bare)
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        compare(Path(tmp), args)


def compare(tmp: Path, args: argparse.Namespace) -> None:
    if args.model is None:
        from tests.tiny_model import build_tiny_model

        args.model = build_tiny_model(tmp / "tiny")
    dataset = write_rows(tmp / "rows.jsonl", args.steps * args.batch, args.words)
    common = dict(method="kto", base_model=str(args.model), dataset=str(dataset), max_steps=args.steps,
                  per_device_train_batch_size=args.batch, max_length=512, torch_threads=args.threads)
    bare_config = TrainConfig(output_dir=str(tmp / "unused"), **common).to_json(tmp / "bare.json")
    wrapper, bare = [], []
    for repeat in range(args.repeats):
        wrapper.append(run_wrapper(TrainConfig(output_dir=str(tmp / f"adapter-{repeat}"), **common)))
        bare.append(run_bare(bare_config))
        print(f"repeat {repeat}: wrapper {wrapper[-1][0]:.1f} tok/s, bare TRL {bare[-1][0]:.1f} tok/s", flush=True)
    w, b = statistics.median(r[0] for r in wrapper), statistics.median(r[0] for r in bare)
    paired = statistics.median(x[0] / y[0] for x, y in zip(wrapper, bare))
    print(f"model {args.model}, KTO, {args.steps} steps x batch {args.batch}, {args.threads} torch thread(s)")
    print(f"wrapper (subprocess): {w:.0f} tokens/s in the loop, {statistics.median(r[1] for r in wrapper):.1f} s wall")
    print(f"bare TRL script:      {b:.0f} tokens/s in the loop, {statistics.median(r[1] for r in bare):.1f} s wall")
    print(f"ratio wrapper / bare: {w / b:.3f} (medians of {args.repeats} runs), "
          f"{paired:.3f} median of pairs (target >= 0.95)")


if __name__ == "__main__":
    main()
