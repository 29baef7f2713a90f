"""Does a training recipe move the model? The KTO loss curve of recipes on score-labelled rows.

    .venv/bin/python -m benchmarks.bench_recipe --model data/models/SmolLM2-135M-Instruct --rows 24

Rows: the project's safety set (train split), each answer labelled by its CARES score (1 →
desirable, 0 → undesirable, 0.5 left out), balanced, in the order a cycle would shuffle them.
Each recipe trains a fresh LoRA in its own child process (``run_training``) and prints its loss
at every step. The default recipe is TrainConfig's own; ``--recipe lr,epochs`` adds others
(e.g. ``--recipe 5e-5,1`` for the recipe that left the loss at 0.500).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import tempfile
from pathlib import Path

from retrain.training import TrainConfig, run_training
from serve.cares import safety_score, safety_set_file


def score_rows(count: int, seed: int) -> list[dict]:
    items = [json.loads(line) for line in safety_set_file().read_text().splitlines() if line.strip()]
    scored = [(item, safety_score(item["harmful_level"], item["label"])) for item in items if item["split"] == "train"]
    rows = {True: [], False: []}
    for item, score in scored:
        if score in (0.0, 1.0):
            rows[score == 1.0].append({"prompt": [{"role": "user", "content": item["prompt"]}],
                                       "completion": [{"role": "assistant", "content": item["answer"]}],
                                       "label": score == 1.0, "message_ids": [item["id"]]})
    chosen = rows[True][: count // 2] + rows[False][: count - count // 2]
    random.Random(seed).shuffle(chosen)  # TRL's KTO trainer does not shuffle
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="base model folder")
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--recipe", action="append", default=[], help="lr,epochs (repeatable); default: TrainConfig's")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=256, help="longest prompt + answer in tokens")
    args = parser.parse_args()
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    recipes = [(defaults["learning_rate"], defaults["num_train_epochs"])]
    recipes += [tuple(float(x) for x in recipe.split(",")) for recipe in args.recipe]
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "kto.jsonl"
        dataset.write_text("".join(json.dumps(row) + "\n" for row in score_rows(args.rows, seed=0)))
        for i, (lr, epochs) in enumerate(recipes):
            config = TrainConfig(method="kto", base_model=str(args.model), dataset=str(dataset),
                                 output_dir=str(Path(tmp) / f"adapter-{i}"), learning_rate=lr,
                                 num_train_epochs=epochs, max_length=args.max_length, torch_threads=args.threads)
            losses: list[float] = []

            def progress(event: dict) -> None:
                if event.get("event") == "progress":
                    losses.append(event["loss"])
                    print(f"  step {event.get('step')}/{event.get('total')}: loss {event['loss']:.4f}", flush=True)

            print(f"lr {lr:g} x {epochs:g} epochs, {args.rows} rows:", flush=True)
            result = run_training(config, on_progress=progress)
            curve = " ".join(f"{loss:.3f}" for loss in losses)
            print(f"lr {lr:g} x {epochs:g} epochs, {args.rows} rows: {result.status}, {len(losses)} steps, "
                  f"loss {curve}", flush=True)


if __name__ == "__main__":
    main()
