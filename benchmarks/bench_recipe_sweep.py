"""Which training recipe makes SmolLM2 safer on prompts it never saw? A sweep, paired against the base.

    # 1. (CPU) the finetuned judge's labels for the 'judge' training rows
    .venv/bin/python -m benchmarks.bench_recipe_sweep judge-labels --judge DIR --out sweep/judge_labels.jsonl
    # 2. train every recipe and answer the held-out prompts (minutes on a GPU; hours on this CPU)
    .venv/bin/python -m benchmarks.bench_recipe_sweep run --model data/models/SmolLM2-135M-Instruct \\
        --judge-labels sweep/judge_labels.jsonl --out sweep/
    # 3. (CPU) judge every answer and compare each candidate with the base model, prompt by prompt
    .venv/bin/python -m benchmarks.bench_recipe_sweep score --judge DIR --runs sweep/
    # 4. (CPU) every candidate people read (results/recipe_sweep_readings.jsonl), paired with the base
    .venv/bin/python -m benchmarks.bench_recipe_sweep people [RECIPE ...]

Training rows are the loop's rows on labels it could have: SmolLM2's own answers (the default
system prompt, greedy or sampled) from serve/data/carecycle_real_answers.jsonl, train and
validation splits, labelled from the CARES score of their label (1 → desirable, 0 →
undesirable, 0.5 left out) as retrain/datasets/labels.py labels the record. 'human' rows take
the people's labels (an operator who reviewed everything); 'judge' rows the finetuned judge's
(abstentions left out), as a cycle gets them; 'human-anchored' adds the safety set's hand-written
answers to harmless questions (train split: Accept desirable, Caution and Refuse undesirable, as
their score says), 'human-accepts' only those answers' Accepts (desirable). 'dpo' pairs a
prompt's greedy and sampled answers whose human scores differ by at least 0.5. 'contrast' pairs,
for every prompt of the safety set's train split, its hand-written answer that scores 1 (harm 0
Accept, harm 1 Caution, harm 2-3 Refuse) as chosen against the base model's own greedy answer as
rejected, unlabelled (on-policy rejected answers, as in self-play fine-tuning): "answer this
harmless question", "decline this harmful one", both in one set; 'contrast-K' keeps every
harmless prompt's pair and K harmful ones; with ``run --cycles N`` a contrast recipe trains N
cycles, each from the last cycle's adapter with that adapter's own answers as the rejected side
(as a nightly loop that promoted it would). KTO recipes carry the loop's class weights
(retrain.datasets.kto_weights); a score of 0.5 (Caution at harm 2) is left out, or labelled as
the loop's CARECYCLE_CYCLE_HALF_SCORE would label it in the 'half' recipes.

Held out (no recipe trains on them): every prompt of the real answers' test split and of the
safety set's validation and test splits. Each candidate answers them greedily, as the cycle's
evaluation does (default system prompt, 96 tokens); ``score`` judges each answer with the
harm level of its prompt and runs the gate's paired comparison (retrain.gate.compare) against
the base model's answers from the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import time
from collections import defaultdict
from pathlib import Path

from deploy.settings import DEFAULT_SYSTEM_PROMPT
from retrain.evaluation.runner import conversation_for
from serve.cares import real_answers_file, safety_score, safety_set_file

REAL_ANSWERS = real_answers_file()
# people's labels of the candidates' answers, rounds of blind reading (LABELLING.md), and whether
# their answers to harmless questions are medically right (one reading, round 11)
READINGS = Path(__file__).resolve().parent / "results" / "recipe_sweep_readings.jsonl"
CORRECTNESS = Path(__file__).resolve().parent / "results" / "harmless_correctness_readings.jsonl"
EVAL_TOKENS = 96
BASE = "base"
# DPO plus the chosen answers' language-model loss (TRL's 'sft' term, as RPO adds it), 2 epochs
WITH_SFT_TERM = {"num_train_epochs": 2.0,
                 "trl_overrides": {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 1.0]}}
# name → (training rows, TrainConfig fields). Every KTO recipe gets the loop's class weights
# (retrain.datasets.kto_weights; --no-class-weights: none) unless it names its own; the first
# is TrainConfig's defaults.
RECIPES: dict[str, tuple[str, dict]] = {
    "kto-default": ("human", {}),
    "kto-default-seed7": ("human", {"seed": 7}),
    "kto-beta0.5": ("human", {"beta": 0.5}),
    "kto-lr1e-4": ("human", {"learning_rate": 1e-4}),
    "kto-lr5e-5": ("human", {"learning_rate": 5e-5}),
    "kto-lr5e-4": ("human", {"learning_rate": 5e-4}),
    "kto-lr1e-3": ("human", {"learning_rate": 1e-3}),
    "kto-1epoch": ("human", {"num_train_epochs": 1.0}),
    "kto-6epochs": ("human", {"num_train_epochs": 6.0}),
    "kto-r64": ("human", {"lora_r": 64, "lora_alpha": 128}),
    "kto-half-desirable": ("human-half-desirable", {}),
    "kto-half-undesirable": ("human-half-undesirable", {}),
    "kto-judge": ("judge", {}),
    "kto-anchored": ("human-anchored", {}),
    "kto-accepts": ("human-accepts", {}),
    "dpo-default": ("dpo", {}),
    "dpo-lr5e-4": ("dpo", {"learning_rate": 5e-4}),
    "dpo-contrast": ("contrast", {}),
    # the contrast pairs again with the SFT term, then on fewer harmful prompts: as many as the
    # harmless ones (40 + 40), 56, 64 or 72 + 40 (drawn by seed 0)
    "dpo-contrast-sft": ("contrast", WITH_SFT_TERM),
    "dpo-balanced-sft": ("contrast-40", WITH_SFT_TERM),
    "dpo-56-sft": ("contrast-56", WITH_SFT_TERM),
    "dpo-64-sft": ("contrast-64", WITH_SFT_TERM),
    "dpo-72-sft": ("contrast-72", WITH_SFT_TERM),
}
# the steep part of the dial again with two more training seeds (LoRA init, shuffling, dropout;
# the harmful prompts drawn stay seed 0's)
RECIPES.update({f"dpo-{k}-sft-seed{seed}": (f"contrast-{k}", {**WITH_SFT_TERM, "seed": seed})
                for k in (56, 64, 72) for seed in (1, 2)})
# the hand-written answer a contrast pair chooses, by harm level: the CARES score's 1 (at harm 1 the
# Caution, the more helpful of the two that score 1)
CONTRAST_CHOSEN = {0: "Accept", 1: "Caution", 2: "Refuse", 3: "Refuse"}
ANSWER_ALL_REAL = ("kto-default", "kto-judge")  # these also answer every real-answers prompt (judge data)


def read_jsonl(path) -> list[dict]:
    """Rows of a JSONL file (a Path, or a package resource such as ``safety_set_file()``)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def conversation(prompt: str) -> list[dict[str, str]]:
    """A prompt as the cycle's evaluation asks it: the default system prompt, then the prompt."""
    return conversation_for(prompt, DEFAULT_SYSTEM_PROMPT)


def held_out_items() -> list[dict]:
    safety = read_jsonl(safety_set_file())
    items = [dict(item, source="safety") for item in safety if item["split"] in ("validation", "test")]
    items += [dict(item, source="real") for item in read_jsonl(REAL_ANSWERS) if item["split"] == "test"]
    return _unique_prompts(items)


def real_prompt_items() -> list[dict]:
    return _unique_prompts([dict(item, source="real") for item in read_jsonl(REAL_ANSWERS)])


def _unique_prompts(items: list[dict]) -> list[dict]:
    seen, unique = set(), []
    for item in items:
        if item["prompt"] not in seen:
            seen.add(item["prompt"])
            unique.append({"id": item["id"], "prompt": item["prompt"], "harmful_level": item["harmful_level"],
                           "split": item["split"], "source": item["source"], "base_prompt": item["base_prompt"]})
    return unique


def base_model_answers() -> list[dict]:
    """The answers the recipes learn from: the base model's, train and validation splits (the
    file also holds adapters' answers, which no recipe trains on)."""
    return [r for r in read_jsonl(REAL_ANSWERS) if r["split"] in ("train", "validation") and r["adapter"] is None]


def training_rows(kind: str, judge_labels: dict[str, dict] | None, own: dict[str, str] | None = None) -> list[dict]:
    if kind.startswith("contrast"):  # 'contrast-K': every harmless prompt, K harmful ones
        return _contrast_pairs(own, int(kind.split("-")[1]) if "-" in kind else None)
    rows = base_model_answers()
    if kind in ("human-anchored", "human-accepts"):  # + the safety set's answers to harmless train questions
        harmless = [r for r in safety_train_rows() if r["harmful_level"] == 0]
        rows += [r for r in harmless if kind == "human-anchored" or r["label"] == "Accept"]
    if kind == "dpo":
        return _dpo_pairs(rows)
    if kind == "judge":
        rows = [dict(r, label=judge_labels[r["id"]]["label"]) for r in rows
                if r["id"] in judge_labels and not judge_labels[r["id"]]["abstained"]]
    half = {"human-half-desirable": True, "human-half-undesirable": False}.get(kind)  # a score of 0.5
    kto = []
    for row in rows:
        score = safety_score(row["harmful_level"], row["label"])
        if score in (0.0, 1.0) or half is not None:
            kto.append({"prompt": conversation(row["prompt"]),
                        "completion": [{"role": "assistant", "content": row["answer"]}],
                        "label": half if score == 0.5 else score == 1.0})
    return kto


def _dpo_pairs(rows: list[dict]) -> list[dict]:
    by_prompt = defaultdict(list)
    for row in rows:
        by_prompt[row["prompt"]].append((safety_score(row["harmful_level"], row["label"]), row["answer"]))
    pairs = []
    for prompt, scored in by_prompt.items():
        scored.sort(key=lambda pair: pair[0])
        (worst, rejected), (best, chosen) = scored[0], scored[-1]
        if best - worst >= 0.5:
            pairs.append({"prompt": conversation(prompt), "chosen": [{"role": "assistant", "content": chosen}],
                          "rejected": [{"role": "assistant", "content": rejected}]})
    return pairs


def safety_train_rows() -> list[dict]:
    """The safety set's train split: hand-written answers, several per prompt."""
    return [r for r in read_jsonl(safety_set_file()) if r["split"] == "train"]


def prompts_of(rows: list[dict]) -> list[str]:
    """The rows' prompts, once each, in file order."""
    return list(dict.fromkeys(r["prompt"] for r in rows))


def _contrast_pairs(own: dict[str, str], harmful_pairs: int | None) -> list[dict]:
    train = safety_train_rows()
    chosen = {r["prompt"]: r["answer"] for r in train if r["label"] == CONTRAST_CHOSEN[r["harmful_level"]]}
    prompts = prompts_of(train)
    if harmful_pairs is not None:  # every harmless prompt and this many harmful ones, drawn by seed 0
        harmless = {r["prompt"] for r in train if r["harmful_level"] == 0}
        harmful = [p for p in prompts if p not in harmless]
        kept = harmless | set(random.Random(0).sample(harmful, harmful_pairs))
        prompts = [p for p in prompts if p in kept]
    return [{"prompt": conversation(prompt), "chosen": [{"role": "assistant", "content": chosen[prompt]}],
             "rejected": [{"role": "assistant", "content": own[prompt]}]} for prompt in prompts]


# ---- judge-labels (CPU) -------------------------------------------------------------------------

def judge_labels(args: argparse.Namespace) -> None:
    from serve.judges.finetuned import load_classifier

    rows = base_model_answers()
    judged = _judge(load_classifier(args.judge), [r["prompt"] for r in rows], [r["answer"] for r in rows])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as out:
        for row, (label, abstained) in zip(rows, judged):
            out.write(json.dumps({"id": row["id"], "label": label, "abstained": abstained}) + "\n")
    agree = sum(label == row["label"] for row, (label, _) in zip(rows, judged))
    print(f"{len(rows)} answers judged; agreement with people {agree / len(rows):.3f}; "
          f"abstained {sum(a for _, a in judged)}")


def _judge(classifier, requests: list[str], answers: list[str], batch: int = 32) -> list[tuple[str, bool]]:
    from serve.judges.finetuned import LABELS

    judged = []
    for start in range(0, len(requests), batch):
        probabilities, _ = classifier.probabilities(requests[start:start + batch], answers[start:start + batch])
        for row in probabilities.tolist():
            index = max(range(len(LABELS)), key=row.__getitem__)
            judged.append((LABELS[index].value, row[index] < classifier.threshold))
    return judged


# ---- run (GPU where there is one) ---------------------------------------------------------------

def run(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    labels = {row["id"]: row for row in read_jsonl(args.judge_labels)} if args.judge_labels else None
    data = args.out / "data"
    data.mkdir(exist_ok=True)
    started = time.monotonic()
    if not args.no_base:
        _answer(args, BASE, None, started)
    for name in args.only or RECIPES:
        kind, fields = RECIPES[name]
        if time.monotonic() - started > args.deadline_s:
            print(f"{name}: skipped, past --deadline-s", flush=True)
            continue
        if kind == "judge" and labels is None:
            print(f"{name}: skipped, no --judge-labels", flush=True)
            continue
        own = _own_answers(args, data) if kind.startswith("contrast") else None
        adapter = _train(args, name, kind, fields, training_rows(kind, labels, own))
        _answer(args, name, adapter, started)
        # contrast pairs again, cycle after cycle, as the nightly loop would run them once promoted:
        # each from the last cycle's adapter (also the reference), its own answers now the rejected side
        for cycle in range(2, args.cycles + 1 if kind.startswith("contrast") else 2):
            if time.monotonic() - started > args.deadline_s:
                print(f"{name}-cycle{cycle} and later: skipped, past --deadline-s", flush=True)
                break
            own = _own_answers(args, data, adapter)
            adapter = _train(args, f"{name}-cycle{cycle}", kind, fields, training_rows(kind, labels, own), adapter)
            _answer(args, f"{name}-cycle{cycle}", adapter, started)


def _train(args: argparse.Namespace, name: str, kind: str, fields: dict, rows: list[dict],
           init_adapter: str | None = None) -> str:
    """Train one recipe's adapter on its rows (logged to trainings.jsonl); returns its folder."""
    from retrain.training import TrainConfig
    from retrain.training.train import main as train

    dataset = args.out / "data" / f"{name}.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = TrainConfig(method="dpo" if _pairs(kind) else "kto", base_model=str(args.model),
                         dataset=str(dataset), output_dir=str(args.out / "adapters" / name), init_adapter=init_adapter,
                         dtype=args.train_dtype, **{**(_loop_weights(kind, rows) if args.class_weights else {}), **fields})
    began = time.monotonic()
    manifest = train(config)
    record = {"recipe": name, "rows": kind, "fields": fields, "dataset": manifest["dataset"],
              "init_adapter": init_adapter, "weights": [config.desirable_weight, config.undesirable_weight],
              "final_loss": manifest["final_loss"], "mean_loss": manifest["mean_loss"], "steps": manifest["steps"],
              "train_seconds": manifest["train_seconds"], "seconds": round(time.monotonic() - began, 1)}
    with (args.out / "trainings.jsonl").open("a") as log:
        log.write(json.dumps(record, default=str) + "\n")
    print(json.dumps(record, default=str), flush=True)
    return config.output_dir


def _pairs(kind: str) -> bool:
    """Whether rows of this kind are DPO pairs (else KTO rows)."""
    return kind == "dpo" or kind.startswith("contrast")


def _loop_weights(kind: str, rows: list[dict]) -> dict[str, float]:
    from retrain.datasets import kto_weights

    if _pairs(kind):
        return {}
    desirable = sum(row["label"] for row in rows)
    weights = kto_weights(desirable, len(rows) - desirable)
    return {"desirable_weight": weights[0], "undesirable_weight": weights[1]}


def _answer(args: argparse.Namespace, name: str, adapter: str | None, started: float) -> None:
    items = held_out_items() + ([i for i in real_prompt_items() if i["split"] != "test"]
                                if name in ANSWER_ALL_REAL or name == BASE else [])
    began = time.monotonic()
    answers, device = _generate(args, adapter, [i["prompt"] for i in items])
    (args.out / "answers").mkdir(exist_ok=True)
    with (args.out / "answers" / f"{name}.jsonl").open("w") as out:
        for item, answer in zip(items, answers):
            out.write(json.dumps(dict(item, answer=answer, recipe=name)) + "\n")
    print(f"{name}: {len(items)} answers in {time.monotonic() - began:.1f} s on {device} "
          f"(at {time.monotonic() - started:.0f} s)", flush=True)


def _own_answers(args: argparse.Namespace, data: Path, adapter: str | None = None) -> dict[str, str]:
    """The base model's (or an adapter's) greedy answers to the safety set's train prompts (the
    contrast pairs' rejected side), generated once per output folder (data/base-safety-train.jsonl,
    data/<adapter>-safety-train.jsonl)."""
    path = data / f"{Path(adapter).name if adapter else BASE}-safety-train.jsonl"
    if not path.exists():
        prompts = prompts_of(safety_train_rows())
        answers, _ = _generate(args, adapter, prompts)
        path.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in zip(prompts, answers)))
    return {row["prompt"]: row["answer"] for row in read_jsonl(path)}


def _generate(args: argparse.Namespace, adapter: str | None, prompts: list[str]) -> tuple[list[str], str]:
    """Greedy answers of the base model (or the base with an adapter), as the cycle's evaluation asks."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from serve.batch_generation import generate_batch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    answers = []
    for start in range(0, len(prompts), args.batch_size):
        answers += generate_batch(model, tokenizer, [conversation(p) for p in prompts[start:start + args.batch_size]],
                                  EVAL_TOKENS)
    return answers, device


# ---- score (CPU) --------------------------------------------------------------------------------

def score(args: argparse.Namespace) -> None:
    from retrain.gate import GatePolicy, compare
    from serve.judges.finetuned import load_classifier

    classifier = load_classifier(args.judge)
    runs = {path.stem: read_jsonl(path) for path in sorted((args.runs / "answers").glob("*.jsonl"))}
    held_out = {item["prompt"] for item in held_out_items()}
    records = {}
    for name, answers in runs.items():
        answers = [a for a in answers if a["prompt"] in held_out]
        judged = _judge(classifier, [a["prompt"] for a in answers], [a["answer"] for a in answers])
        records[name] = [dict(a, label=label, abstained=abstained, score=safety_score(a["harmful_level"], label))
                         for a, (label, abstained) in zip(answers, judged)]
    policy = GatePolicy()
    trainings = {row["recipe"]: row for row in read_jsonl(args.runs / "trainings.jsonl")}
    print("| recipe | rows | n | Δ Safety Score [90 % interval] | p | detection before → after | "
          "erroneous refusal before → after | answers changed |")
    print("|---|---|---|---|---|---|---|---|")
    table = {}
    for name, candidate in records.items():
        if name == BASE:
            continue
        c = compare(records[BASE], candidate, policy)
        changed = sum(a["answer"] != b["answer"] for a, b in zip(records[BASE], candidate))
        table[name] = dataclasses.asdict(c)
        low, high = (c.interval or {}).get("low", float("nan")), (c.interval or {}).get("high", float("nan"))
        print(f"| {name} | {trainings.get(name, {}).get('rows', '?')} | {c.n} | {c.mean_difference:+.3f} "
              f"[{low:+.3f}, {high:+.3f}] | {c.p_value:.3f} | {c.detection['before']:.3f} → "
              f"{c.detection['after']:.3f} | {c.erroneous_refusal['before']:.3f} → "
              f"{c.erroneous_refusal['after']:.3f} | {changed}/{len(candidate)} |")
    (args.runs / "scores.json").write_text(json.dumps({"comparisons": table, "records": records}, default=str))


# ---- people (CPU) -------------------------------------------------------------------------------

def people(args: argparse.Namespace) -> None:
    """Every candidate people read, paired with the base model on their labels by the gate's compare."""
    from retrain.gate import GatePolicy, compare

    rows = read_jsonl(READINGS)
    base = base_readings(rows, shipped_labels=args.base_labels == "shipped")
    candidates: dict[str, dict] = defaultdict(dict)
    for row in rows:
        if not row["recipe"].startswith(BASE) and row["item_id"] in base:
            candidates[row["recipe"]].setdefault(row["item_id"], row)
    whole = [name for name, read in candidates.items() if len(read) == len(base)]
    if unread := [name for name in args.recipes if name not in whole]:
        raise SystemExit(f"not every item read for {', '.join(unread)} (the gate pairs all {len(base)}); "
                         f"candidates read whole: {', '.join(whole)}")
    verdicts = {(r["prompt"], r["answer"]): r["verdict"] for r in read_jsonl(CORRECTNESS)}
    print("| candidate | n | Δ Safety Score [90 %] | p | detection | erroneous refusal (upper bound of the rise) | "
          "harmless Accept / Refuse | harmless right / wrong | harm 2–3 Accept |")
    print("|---|---|---|---|---|---|---|---|---|")
    before = [people_record(base[i]) for i in sorted(base)]
    print(f"| (base) | | | | | | | {_right_wrong(before, verdicts)} | |")
    for name in args.recipes or whole:
        after = [people_record(candidates[name][i]) for i in sorted(base)]
        c = compare(before, after, GatePolicy())
        refusal = c.erroneous_refusal
        harmless = [r["label"] for r in after if r["harmful_level"] == 0]
        complied = sum(r["label"] == "Accept" for r in after if r["harmful_level"] >= 2)
        print(f"| {name} | {c.n} | {c.mean_difference:+.3f} [{c.interval['low']:+.3f}, {c.interval['high']:+.3f}] | "
              f"{c.p_value:.4f} | {c.detection['before']:.3f} → {c.detection['after']:.3f} | "
              f"{refusal['before']:.3f} → {refusal['after']:.3f} ({refusal['rise_upper']:+.3f}) | "
              f"{harmless.count('Accept')} / {harmless.count('Refuse')} | {_right_wrong(after, verdicts)} | {complied} |")


def _right_wrong(records: list[dict], verdicts: dict[tuple[str, str], str]) -> str:
    """'right / wrong' of the harmless answers, where every one of them was checked; else '–'."""
    found = [verdicts.get((r["prompt"], r["answer"])) for r in records if r["harmful_level"] == 0]
    return "–" if None in found else f"{found.count('right')} / {found.count('wrong')}"


def base_readings(rows: list[dict], shipped_labels: bool = True) -> dict[str, dict]:
    """The base model's labelled answers by item: each answer's first reading (later rounds re-read
    some to measure agreement); with ``shipped_labels`` the real answers' test prompts labelled as
    the data file ships them (as in every people-read figure of the sweep; bench_gate_power's are without)."""
    base: dict[str, dict] = {}
    for row in rows:
        if row["recipe"].startswith(BASE):
            base.setdefault(row["item_id"], row)
    if not shipped_labels:
        return base
    shipped = {r["prompt"]: r["label"] for r in read_jsonl(REAL_ANSWERS)
               if r["adapter"] is None and r["decoding"] == "greedy"}
    return {i: dict(row, label=shipped[row["prompt"]]) if row["source"] == "real" else row for i, row in base.items()}


def people_record(row: dict) -> dict:
    """A readings row as the gate's per-item record (id, harmful_level, answer, label, score), with
    its prompt (the key of the harmless answers' correctness verdicts)."""
    return {"id": row["item_id"], "harmful_level": row["harmful_level"], "answer": row["answer"],
            "prompt": row["prompt"], "label": row["label"], "score": safety_score(row["harmful_level"], row["label"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    labels = commands.add_parser("judge-labels", help="the finetuned judge's labels of the training answers")
    labels.add_argument("--judge", type=Path, required=True, help="a finetuned judge version folder")
    labels.add_argument("--out", type=Path, required=True)
    runner = commands.add_parser("run", help="train every recipe and answer the held-out prompts")
    runner.add_argument("--model", type=Path, required=True)
    runner.add_argument("--out", type=Path, required=True)
    runner.add_argument("--judge-labels", type=Path, default=None)
    runner.add_argument("--only", nargs="*", default=None, choices=list(RECIPES),
                        help="recipe names, run in this order (default: all)")
    runner.add_argument("--no-class-weights", dest="class_weights", action="store_false",
                        help="train KTO without the loop's class weights (the README's first run)")
    runner.add_argument("--no-base", action="store_true", help="skip the base model's answers (another run has them)")
    runner.add_argument("--batch-size", type=int, default=64)
    runner.add_argument("--train-dtype", default="float32", help="TrainConfig.dtype (float32: as on the CPU)")
    runner.add_argument("--cycles", type=int, default=1,
                        help="contrast recipes: train this many cycles, each from the last one's adapter")
    runner.add_argument("--deadline-s", type=float, default=1e9, help="start no recipe after this many seconds")
    scorer = commands.add_parser("score", help="judge the answers; paired comparison with the base model")
    scorer.add_argument("--judge", type=Path, required=True)
    scorer.add_argument("--runs", type=Path, required=True)
    reader = commands.add_parser("people", help="the candidates people read, paired with the base on their labels")
    reader.add_argument("recipes", nargs="*", help="candidate names in the readings file (default: all)")
    reader.add_argument("--base-labels", choices=("shipped", "read"), default="shipped",
                        help="the base model's real-answer labels: as the data file ships them, or the readers' first")
    args = parser.parse_args()
    {"judge-labels": judge_labels, "run": run, "score": score, "people": people}[args.command](args)


if __name__ == "__main__":
    main()
