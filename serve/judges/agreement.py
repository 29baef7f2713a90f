"""How far a judge can be trusted: accuracy, macro-F1, confusion matrices, Cohen's kappa."""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence


def classification_metrics(truth: Sequence[Hashable], predicted: Sequence[Hashable]) -> dict[str, float]:
    """Accuracy and macro-F1 (averaged over the classes seen in either list, as sklearn does)."""
    accuracy = sum(t == p for t, p in zip(truth, predicted)) / len(truth)
    f1s = []
    for cls in set(truth) | set(predicted):
        tp = sum(t == p == cls for t, p in zip(truth, predicted))
        wrong = sum((t == cls) != (p == cls) for t, p in zip(truth, predicted))  # false positives + negatives
        f1s.append(2 * tp / (2 * tp + wrong))
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / len(f1s)}


def confusion_matrix(truth: Sequence[Hashable], predicted: Sequence[Hashable], classes: Sequence[Hashable]) -> list[list[int]]:
    """Rows: true class, columns: predicted class, in the order of ``classes``."""
    counts = Counter(zip(truth, predicted))
    return [[counts[(t, p)] for p in classes] for t in classes]


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> float:
    """Agreement beyond chance between two raters of the same items (1 perfect, 0 chance)."""
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second)) / n
    first_counts, second_counts = Counter(first), Counter(second)
    expected = sum(first_counts[c] * second_counts[c] for c in set(first) | set(second)) / (n * n)
    return 1.0 if expected == 1 else (observed - expected) / (1 - expected)
