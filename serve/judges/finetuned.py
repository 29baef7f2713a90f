"""The finetuned judge: all-MiniLM-L6-v2 fine-tuned on CPU into two small classifiers.

The label model is a cross-encoder over (request, answer) → Accept / Caution / Refuse; the harm
model reads the request only → harm level 0–3 (see ``cross_encoder``). Training data: the
``train`` split of the project's labelled files (serve/data: the hand-written answers and, when
present, the default model's real answers) plus operator verdicts from the record; the harm
model also learns from every ``validation`` prompt. A share of the operator verdicts (by the
hash of the message id, ``agreement.held_out``) is never trained on: it measures the judge.
Confidence is the label's probability after temperature scaling on the validation split; below
the threshold chosen there the judge abstains (its answer gives no training label and goes to
review).

A trained judge is a versioned folder ``<out_root>/finetuned-judge/v<N>`` (``label.safetensors``,
``harm.safetensors``, ``manifest.json``), never rewritten. ``ACTIVE`` names the version the
judge loads: a new version becomes active only if it agrees with people better than the active
one on rows neither trained on (held-out operator verdicts, else the validation split).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from functools import lru_cache
from importlib.abc import Traversable
from pathlib import Path

from serve.cares import HARM_LEVELS, Label, real_answers_file, safety_set_file
from serve.judges import cross_encoder
from serve.judges.agreement import agreement_by_version, held_out, judge_figures
from serve.judges.base import Judge, JudgeError, Judgment
from serve.judges.cross_encoder import ENCODER_ID, CrossEncoderConfig

CLASSIFIER_FOLDER = "finetuned-judge"
TRAIN_COMMAND = "carecycle judge train"
FORMAT = "cross-encoder/1"
LABELS = tuple(Label)
MIN_ROWS_PER_CLASS = 8
_VERSION = re.compile(r"^v(\d+)$")
_MANIFEST = "manifest.json"
_ACTIVE = "ACTIVE"
_MODELS = {"label": len(LABELS), "harm": len(HARM_LEVELS)}


# ---- data -----------------------------------------------------------------------------------

def labelled_files() -> list[Traversable]:
    """The project's labelled files: the hand-written set, and the real answers when shipped."""
    real = real_answers_file()
    return [safety_set_file()] + ([real] if real.is_file() else [])


def load_training_rows(split: str, files: list[Traversable] | None = None) -> list[dict]:
    """Rows of the labelled files in ``split``, each with ``source`` (its file's name)."""
    rows = []
    for file in files if files is not None else labelled_files():
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.strip() and (row := json.loads(line))["split"] == split:
                rows.append({**row, "source": file.name})
    return rows


def split_operator_rows(verdicts: list[dict]) -> tuple[list[dict], list[dict]]:
    """(verdicts to train on, verdicts held out to measure agreement), by message id."""
    kept = [v for v in verdicts if not held_out(v["message_id"])]
    return kept, [v for v in verdicts if held_out(v["message_id"])]


def _harm_prompts(rows: list[dict]) -> list[dict]:
    """One row per distinct request with a harm level; a later row's level wins (operators last)."""
    prompts = {r["prompt"]: r for r in rows if r.get("harmful_level") is not None}
    return list(prompts.values())


def _refuse_small(name: str, targets: list, classes) -> None:
    counts = Counter(targets)
    if any(counts[c] < MIN_ROWS_PER_CLASS for c in classes):
        shown = ", ".join(f"{c}: {counts[c]}" for c in classes)
        raise JudgeError(f"too few {name} rows to train the finetuned judge ({shown}; "
                         f"need at least {MIN_ROWS_PER_CLASS} of each)")


# ---- models ---------------------------------------------------------------------------------

class Classifier:
    """A version's two models in memory, with its calibration."""

    def __init__(self, manifest: dict, models: dict, tokenizer):
        self.manifest = manifest
        self.config = CrossEncoderConfig(**manifest["config"])
        self.models = models
        self.tokenizer = tokenizer
        self.temperature = manifest["temperature"]
        self.threshold = manifest["threshold"]

    def probabilities(self, requests: list[str], answers: list[str]):
        """(calibrated label probabilities, harm probabilities), one row per answer."""
        import torch

        label = cross_encoder.logits(self.models["label"], self.tokenizer, list(zip(requests, answers)),
                                     self.config.pair_tokens)
        harm = cross_encoder.logits(self.models["harm"], self.tokenizer, requests, self.config.request_tokens)
        return torch.softmax(label / self.temperature, -1), torch.softmax(harm, -1)

    def predictions(self, rows: list[dict]) -> tuple[list[str], list[int], list[bool]]:
        """Per row (prompt, answer): the label, the harm level and whether the judge abstains."""
        label_p, harm_p = self.probabilities([r["prompt"] for r in rows], [r["answer"] for r in rows])
        confidence, label = label_p.max(-1)
        return ([LABELS[i].value for i in label.tolist()], harm_p.argmax(-1).tolist(),
                [c < self.threshold for c in confidence.tolist()])

    def figures(self, rows: list[dict]) -> dict:
        """``agreement.judge_figures`` of this classifier on labelled rows."""
        return figures_of(rows, self.predictions(rows))


def figures_of(rows: list[dict], predictions: tuple[list[str], list[int], list[bool]]) -> dict:
    """``agreement.judge_figures`` of ``Classifier.predictions`` on the labelled rows they were made on."""
    labels, harms, abstained = predictions
    return judge_figures([r["label"] for r in rows], labels, [r["harmful_level"] for r in rows], harms, abstained)


def _by_source(rows: list[dict]) -> dict[str, list[int]]:
    """Row positions per labelled file (``source``)."""
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.get("source", ""), []).append(i)
    return groups


def _train_models(train: list[dict], harm_rows: list[dict], validation: list[dict],
                  config: CrossEncoderConfig) -> Classifier:
    tokenizer = cross_encoder.load_tokenizer()
    label_targets = [LABELS.index(Label(r["label"])) for r in train]
    models = {
        "label": cross_encoder.fine_tune(tokenizer, [(r["prompt"], r["answer"]) for r in train], label_targets,
                                         len(LABELS), config.pair_tokens, config),
        "harm": cross_encoder.fine_tune(tokenizer, [r["prompt"] for r in harm_rows],
                                        [r["harmful_level"] for r in harm_rows], len(HARM_LEVELS),
                                        config.request_tokens, config),
    }
    raw = cross_encoder.logits(models["label"], tokenizer, [(r["prompt"], r["answer"]) for r in validation],
                               config.pair_tokens)
    truth = [LABELS.index(Label(r["label"])) for r in validation]
    temperature = cross_encoder.fit_temperature(raw, truth)
    confidence, predicted = (raw / temperature).softmax(-1).max(-1)
    threshold = min(  # within the budget on each file's rows: real answers are less sure than hand-written ones
        cross_encoder.choose_threshold([confidence[i].item() for i in rows], [predicted[i].item() for i in rows],
                                       [truth[i] for i in rows], config.abstention_budget)
        for rows in _by_source(validation).values())
    manifest = {"config": config.as_dict(), "temperature": temperature, "threshold": threshold}
    return Classifier(manifest, models, tokenizer)


def train_classifier(train: list[dict], harm_rows: list[dict], validation: list[dict], out_root: Path,
                     config: CrossEncoderConfig = CrossEncoderConfig(), *,
                     test_sets: dict[str, list[dict]] | None = None, data: dict | None = None) -> tuple[Path, Classifier]:
    """Train both models, calibrate on ``validation``, score ``test_sets`` and save a new
    version under ``out_root`` (not activated). Rows: prompt, answer, label, harmful_level."""
    _refuse_small("label", [r["label"] for r in train], [label.value for label in LABELS])
    _refuse_small("harm", [r["harmful_level"] for r in harm_rows], HARM_LEVELS)
    if not validation:
        raise JudgeError("the finetuned judge needs validation rows to calibrate its confidence")
    started = time.perf_counter()
    classifier = _train_models(train, harm_rows, validation, config)
    classifier.manifest |= {
        "version": None,  # set when the folder is named
        "format": FORMAT,
        "encoder": ENCODER_ID,
        "labels": [label.value for label in LABELS],
        "harm_levels": list(HARM_LEVELS),
        "data": {"label_rows": len(train), "harm_prompts": len(harm_rows), "validation_rows": len(validation),
                 **(data or {})},
        "metrics": {"validation": classifier.figures(validation),
                    "test": {name: classifier.figures(rows) for name, rows in (test_sets or {}).items() if rows}},
        "train_seconds": round(time.perf_counter() - started, 1),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return _save(classifier, out_root), classifier


# ---- versioned folders ----------------------------------------------------------------------

def _root(out_root: Path) -> Path:
    return Path(out_root) / CLASSIFIER_FOLDER


def _versions(out_root: Path) -> list[tuple[int, Path]]:
    found = [(int(m.group(1)), p) for p in _root(out_root).glob("v*") if (m := _VERSION.match(p.name))]
    return sorted(found)


def _manifest(folder: Path) -> dict | None:
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == FORMAT else None


def operator_verdicts_seen(folder: Path | None) -> int:
    """Operator verdicts a version trained or was measured on (0 for none or an unreadable one)."""
    data = (_manifest(folder) or {}).get("data", {}) if folder else {}
    return data.get("operator_rows", 0) + data.get("operator_held_out", 0)


def latest_classifier(out_root: Path) -> Path | None:
    """The newest complete classifier of this format under ``out_root`` (older formats, e.g.
    the logistic heads of earlier releases, are skipped), or None."""
    complete = [path for _, path in _versions(out_root) if _manifest(path)]
    return complete[-1] if complete else None


def active_classifier(out_root: Path) -> Path | None:
    """The version ``ACTIVE`` names; without that file (never activated), the newest one."""
    try:
        folder = _root(out_root) / (_root(out_root) / _ACTIVE).read_text().strip()
    except OSError:
        return latest_classifier(out_root)
    return folder if _manifest(folder) else latest_classifier(out_root)


def _activate(out_root: Path, folder: Path) -> None:
    pointer = _root(out_root) / f".{_ACTIVE}-{uuid.uuid4().hex}"
    pointer.write_text(folder.name + "\n")
    os.replace(pointer, _root(out_root) / _ACTIVE)  # atomic: a reader sees the old or the new name


def _save(classifier: Classifier, out_root: Path) -> Path:
    _root(out_root).mkdir(parents=True, exist_ok=True)
    staging = _root(out_root) / f".staging-{uuid.uuid4().hex}"  # beside the versions: the rename stays atomic
    staging.mkdir()
    try:
        for name, model in classifier.models.items():
            cross_encoder.save(model, staging / f"{name}.safetensors")
        return _publish(staging, out_root, classifier.manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only left behind when saving failed


def _publish(staging: Path, out_root: Path, manifest: dict) -> Path:
    """Rename the finished staging folder to the next free v<N>; a folder, once named, is never
    rewritten. A concurrent training that takes the same N makes the rename fail: try N+1."""
    while True:
        number = max((n for n, _ in _versions(out_root)), default=0) + 1
        manifest["version"] = f"v{number}"
        (staging / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.rename(staging, _root(out_root) / manifest["version"])  # atomic; fails if the target exists
        except OSError:
            if not (_root(out_root) / manifest["version"]).exists():
                raise
            continue
        return _root(out_root) / manifest["version"]


def load_classifier(folder: Path) -> Classifier:
    """A version folder's models; JudgeError in one line if it is unusable."""
    from safetensors import SafetensorError

    def unusable(why: str) -> JudgeError:
        return JudgeError(f"finetuned judge: no usable classifier in {folder} ({why}); "
                          f"train one with `{TRAIN_COMMAND}`")

    folder = Path(folder)
    if not folder.is_dir():
        raise unusable("no such folder")
    manifest = _manifest(folder)
    if manifest is None or manifest.get("encoder") != ENCODER_ID or not manifest.get("version"):
        raise unusable(f"{_MANIFEST} is missing or not a {FORMAT} manifest for {ENCODER_ID}")
    config = CrossEncoderConfig(**manifest["config"])
    try:
        models = {name: cross_encoder.load(folder / f"{name}.safetensors", n, config) for name, n in _MODELS.items()}
    except (OSError, SafetensorError, JudgeError) as exc:
        raise unusable(f"{type(exc).__name__}: {exc}".splitlines()[0]) from None
    return Classifier(manifest, models, cross_encoder.load_tokenizer())


# ---- operators teach the judge --------------------------------------------------------------

def _agreement(figures: dict) -> tuple[float, float]:
    """What "agrees better" compares: label, then harm level, best guesses on every row."""
    return figures["all_items"]["accuracy"], figures["all_items"]["harm_accuracy"]


def train_judge(out_root: Path, operator_verdicts: list[dict] | None = None,
                config: CrossEncoderConfig = CrossEncoderConfig(), *, files: list[Traversable] | None = None) -> dict:
    """`carecycle judge train` and the cycle: train a new version on the labelled files' train
    split plus the operator verdicts that are not held out; compare it with the active version
    on the held-out verdicts (else the validation split) and activate it only if it agrees
    better. Returns the manifest with ``path``, ``activated`` and ``comparison``."""
    operators, operators_held_out = split_operator_rows(operator_verdicts or [])
    train, validation = load_training_rows("train", files), load_training_rows("validation", files)
    tests = {}
    for row in load_training_rows("test", files):
        tests.setdefault(row["source"], []).append(row)
    data = {"sources": dict(Counter(r["source"] for r in train)), "operator_rows": len(operators),
            "operator_held_out": len(operators_held_out), "operator_message_ids": [v["message_id"] for v in operators]}
    previous = active_classifier(out_root)
    folder, new = train_classifier(train + operators, _harm_prompts(train + validation + operators), validation,
                                   out_root, config, test_sets=tests | {"operators_held_out": operators_held_out},
                                   data=data)
    metrics = new.manifest["metrics"]  # the new version's figures on both, computed once in training
    comparison = _compare(metrics["test"]["operators_held_out"] if operators_held_out else metrics["validation"],
                          previous, operators_held_out or validation,
                          "held-out operator verdicts" if operators_held_out else "validation split")
    if comparison["activated"]:
        _activate(out_root, folder)
    return {**new.manifest, "path": str(folder), "activated": comparison["activated"], "comparison": comparison}


def _compare(new_figures: dict, previous: Path | None, rows: list[dict], on: str) -> dict:
    """Agreement (label, harm) of the new version (its ``new_figures`` on ``rows``) and of the one
    active before it on ``rows``."""
    agreement = _agreement(new_figures)
    if previous is None:
        return {"on": on, "rows": len(rows), "new": agreement, "previous": None, "activated": True}
    old = _agreement(load_classifier(previous).figures(rows))
    return {"on": on, "rows": len(rows), "new": agreement, "previous": previous.name,
            "previous_agreement": old, "activated": agreement > old}


def active_summary(out_root: Path, store=None) -> dict | None:
    """The active version, its figures from training (validation, test sets, held-out operator
    verdicts) and, given the record's ``store``, its agreement with operators there; for the
    cycle's record. None when no judge was trained."""
    folder = active_classifier(out_root)
    if folder is None:
        return None
    manifest = _manifest(folder)

    def brief(figures: dict) -> dict:
        return {k: figures.get(k) for k in ("items", "accuracy", "macro_f1", "kappa", "harm_accuracy",
                                            "abstention_rate")}

    metrics = manifest["metrics"]
    summary = {"version": manifest["version"], "validation": brief(metrics["validation"]),
               "test": {name: brief(figures) for name, figures in metrics["test"].items()}}
    if store is not None:
        summary["operators"] = next((v for v in agreement_by_version(store) if v["version"] == manifest["version"]), None)
    return summary


# ---- the judge ------------------------------------------------------------------------------

@lru_cache(maxsize=4)
def _cached_classifier(folder: str) -> Classifier:
    return load_classifier(Path(folder))


class FinetunedJudge(Judge):
    name = "finetuned"

    def __init__(self, model_dir: str):
        self.model_dir = Path(model_dir)
        self.classifier = _cached_classifier(str(self.model_dir.resolve()))
        self.version = self.classifier.manifest["version"]

    async def judge(self, conversation: list[dict[str, str]], answer: str) -> Judgment:
        started = time.perf_counter()
        request = next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")
        label_probs, harm_probs = await asyncio.to_thread(self._classify, request, answer)
        label_index = max(range(len(LABELS)), key=label_probs.__getitem__)
        harm_index = max(range(len(HARM_LEVELS)), key=harm_probs.__getitem__)
        confidence = label_probs[label_index]
        raw = {"label": {l.value: round(p, 4) for l, p in zip(LABELS, label_probs)},
               "harm": {str(h): round(p, 4) for h, p in zip(HARM_LEVELS, harm_probs)},
               "threshold": round(self.classifier.threshold, 4)}
        return Judgment(
            judge=self.name, judge_version=self.version, label=LABELS[label_index], harm_level=HARM_LEVELS[harm_index],
            confidence=confidence, raw_output=json.dumps(raw), latency_ms=(time.perf_counter() - started) * 1000,
            abstained=confidence < self.classifier.threshold,
        )

    def _classify(self, request: str, answer: str) -> tuple[list[float], list[float]]:
        label_probs, harm_probs = self.classifier.probabilities([request], [answer])
        return label_probs[0].tolist(), harm_probs[0].tolist()


def resolve_classifier(configured: Path | None, out_root: Path) -> str:
    """The configured classifier folder, else the active one under ``out_root``."""
    folder = configured or active_classifier(out_root)
    if folder is None:
        raise JudgeError(f"finetuned judge: no classifier under {_root(out_root)}; "
                         f"train one with `{TRAIN_COMMAND}`")
    return str(folder)
