"""Does the finetuned judge agree with people on adapters' answers, and does training it on them help?

    .venv/bin/python -m benchmarks.bench_judge_adapters --judge DIR      # DIR: a judge version to compare

The recipe sweep's people-read answers (results/recipe_sweep_readings.jsonl: the base model's and
every candidate adapter's answers to the sweep's held-out prompts, rounds 1-10), each distinct
text once with its first reading, split by prompt: answers to the safety set's and the real
answers' *test* prompts measure; the rest (the safety set's validation prompts, and the real
answers' train and validation prompts that two candidates also answered) are trained on. A new
judge version is trained as `carecycle judge train` trains one (the shipped labelled files,
calibrated on their validation split) with the trained-on part as one more labelled file, in a
temporary folder; then both judges — the one named and the new one — are measured on the
held-out part, overall and for the base model's answers and the adapters' apart.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.bench_recipe_sweep import BASE, READINGS, read_jsonl
from serve.cares import real_answers_file, safety_set_file

PEOPLE_FILE = "people_read_sweep_answers.jsonl"
WRITERS = {"adapter": "adapters' answers", BASE: "the base model's answers", None: "all"}


def split_by_prompt(rows: list[dict]) -> list[dict]:
    """Each distinct (prompt, answer) once, first reading, with a judge split from its prompt's:
    the safety set's and the real answers' test prompts → test (held out), every other → train."""
    test = {r["prompt"] for file in (safety_set_file(), real_answers_file()) for r in read_jsonl(file)
            if r["split"] == "test"}
    texts: dict[tuple[str, str], dict] = {}
    for row in rows:
        texts.setdefault((row["prompt"], row["answer"]), {
            "prompt": row["prompt"], "answer": row["answer"], "label": row["label"],
            "harmful_level": row["harmful_level"], "split": "test" if row["prompt"] in test else "train",
            "writer": BASE if row["recipe"].startswith(BASE) else "adapter"})
    return list(texts.values())


def agreement(figures: dict) -> str:
    """A judge's agreement with people, on the items it did not abstain on and on every item."""
    return (f"accuracy {figures['accuracy']:.3f}, κ {figures['kappa']:.3f} on {figures['items']} not abstained "
            f"(abstained {figures['abstention_rate']:.2f}); every item: accuracy {figures['all_items']['accuracy']:.3f}")


def main() -> None:
    from serve.judges.cross_encoder import CrossEncoderConfig
    from serve.judges.finetuned import figures_of, load_classifier

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--judge", type=Path, required=True, help="a finetuned judge version folder to compare")
    parser.add_argument("--epochs", type=int, default=CrossEncoderConfig.epochs)
    parser.add_argument("--keep", type=Path, help="train the new judge into this judges folder and keep it (default: "
                        "a temp folder); as `carecycle judge train` does, it becomes the folder's active version if "
                        "it agrees better — name a fresh folder, not a server's")
    parser.add_argument("--no-train", action="store_true", help="measure the named judge only")
    args = parser.parse_args()
    rows = split_by_prompt(read_jsonl(READINGS))
    held_out = [r for r in rows if r["split"] == "test"]
    trained_on = [r for r in rows if r["split"] == "train"]
    print(f"{len(rows)} distinct people-read answers: {len(trained_on)} to train on, "
          f"{len(held_out)} held out ({sum(r['writer'] == 'adapter' for r in held_out)} by adapters)")
    judges = {f"named judge ({args.judge.name})": load_classifier(args.judge)}
    with tempfile.TemporaryDirectory() as scratch:
        if not args.no_train:
            judges["new judge"] = _train_new(trained_on, args.keep or Path(scratch), Path(scratch), args.epochs)
        # each judge reads the held-out answers once; every figure below comes from these predictions
        predicted = {name: judge.predictions(held_out) for name, judge in judges.items()}
        for writer in ("adapter", BASE, None):
            at = [i for i, r in enumerate(held_out) if writer in (None, r["writer"])]
            print(f"held out, {WRITERS[writer]} ({len(at)}):")
            for name, (labels, harms, abstained) in predicted.items():
                part = ([labels[i] for i in at], [harms[i] for i in at], [abstained[i] for i in at])
                print(f"  {name}: {agreement(figures_of([held_out[i] for i in at], part))}")
        if len(judges) == 2:
            print(paired_by_prompt(held_out, *predicted.values()))


def hits(rows: list[dict], predictions: tuple[list[str], list[int], list[bool]]) -> list[int]:
    """Per row, 1 where the judge gave people's label and did not abstain (an abstention is a miss:
    the gate drops the item)."""
    labels, _, abstained = predictions
    return [int(not skipped and label == r["label"]) for r, label, skipped in zip(rows, labels, abstained)]


def paired_by_prompt(rows: list[dict], named, new) -> str:
    """New minus named judge's share of rows labelled as people did without abstaining, paired within
    each held-out prompt (a prompt's answers share a judge's errors, so the prompt is the unit):
    mean, 90 % interval, one-sided p. ``named``, ``new``: each judge's predictions on ``rows``."""
    import numpy as np

    from retrain.evaluation.metrics import bootstrap_ci
    from retrain.gate import sign_flip_p

    per_prompt: dict[str, list[int]] = {}
    for row, before, after in zip(rows, hits(rows, named), hits(rows, new)):
        per_prompt.setdefault(row["prompt"], []).append(after - before)
    differences = np.array([np.mean(d) for d in per_prompt.values()])
    low, high = bootstrap_ci(differences, 9999, 0, level=0.9)
    return (f"new - named, agreed without abstaining, paired by prompt ({len(differences)} prompts): "
            f"{differences.mean():+.3f} [{low:+.3f}, {high:+.3f}], one-sided p {sign_flip_p(differences, 9999, 0):.4f}")


def _train_new(rows: list[dict], out_root: Path, scratch: Path, epochs: int):
    """A judge trained as `carecycle judge train` trains one, ``rows`` (the trained-on part only: the
    held-out part is scored once, by ``main``) as a labelled file beside the shipped ones."""
    from serve.judges.cross_encoder import CrossEncoderConfig
    from serve.judges.finetuned import labelled_files, load_classifier, train_judge

    people = scratch / PEOPLE_FILE
    people.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trained = train_judge(out_root, files=[*labelled_files(), people], config=CrossEncoderConfig(epochs=epochs))
    print(f"new judge: {trained['data']['label_rows']} label rows, {trained['train_seconds']} s; "
          f"shipped validation: {agreement(trained['metrics']['validation'])}")
    return load_classifier(Path(trained["path"]))


if __name__ == "__main__":
    main()
