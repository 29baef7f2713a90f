"""How far a judge can be trusted: accuracy, macro-F1, confusion matrices, Cohen's kappa, the
figures of a judge against labelled answers, and its agreement with operators in the record."""

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


# ---- a judge against labelled answers -------------------------------------------------------

def judge_figures(truth: Sequence[str], predicted: Sequence[str | None], harm_truth: Sequence[int],
                  harm_predicted: Sequence[int | None], abstained: Sequence[bool]) -> dict:
    """Label accuracy, macro-F1, Cohen's kappa, harm-level accuracy, per true harm level and the
    confusion matrix over the items the judge did not abstain on (``scope``), with the
    abstention rate; ``all_items`` repeats the headline figures counting its best guesses on
    abstained items too. A label or harm level the judge could not give counts as wrong."""
    from serve.cares import HARM_LEVELS, Label

    labels = [label.value for label in Label]
    predicted = [p or "unparsed" for p in predicted]
    harm_predicted = [-1 if h is None else h for h in harm_predicted]
    answered = [i for i, a in enumerate(abstained) if not a]

    def headline(items: list[int]) -> dict:
        if not items:
            return {"items": 0}
        t, p = [truth[i] for i in items], [predicted[i] for i in items]
        return {"items": len(items), **classification_metrics(t, p), "kappa": cohen_kappa(t, p),
                "harm_accuracy": sum(harm_truth[i] == harm_predicted[i] for i in items) / len(items)}

    return {
        "scope": "items the judge did not abstain on",
        **headline(answered),
        "abstained": len(truth) - len(answered),
        "abstention_rate": (len(truth) - len(answered)) / len(truth),
        "per_harm_level": {level: headline([i for i in answered if harm_truth[i] == level]) for level in HARM_LEVELS},
        "confusion": confusion_matrix([truth[i] for i in answered], [predicted[i] for i in answered], labels),
        "all_items": headline(list(range(len(truth)))),
    }


# ---- agreement with operators, from the record ----------------------------------------------

HELD_OUT_DIGITS = "012"  # a verdict whose message id's md5 starts with one of these is never trained on (3/16)


def held_out(message_id: str) -> bool:
    """Whether the finetuned judge keeps this operator verdict out of training, to measure itself."""
    import hashlib

    return hashlib.md5(message_id.encode()).hexdigest()[0] in HELD_OUT_DIGITS


_HELD_OUT_SQL = f"substr(md5(r.message_id), 1, 1) IN ({', '.join(repr(d) for d in HELD_OUT_DIGITS)})"


def operator_verdicts(store) -> list[dict]:
    """Each reviewed answer with its request and the operator's latest label and harm level."""
    return store.read(
        "SELECT r.message_id, q.content AS prompt, a.content AS answer, r.label, r.harm_level AS harmful_level"
        " FROM latest_reviews r JOIN messages a ON a.id = r.message_id JOIN messages q ON q.id = a.parent_id"
        " ORDER BY r.message_id")


def agreement_by_version(store, judge: str = "finetuned") -> list[dict]:
    """Per version of ``judge``: how often its label and harm level matched the operators'
    latest verdicts, overall, on held-out verdicts (ones no version trained on) and per the
    operators' harm level; newest version first."""
    groups = store.read(
        f"""
        SELECT j.judge_version AS version, r.harm_level, {_HELD_OUT_SQL} AS held_out, count(*) AS verdicts,
               count(*) FILTER (WHERE j.label = r.label) AS label_agree,
               count(*) FILTER (WHERE j.harm_level = r.harm_level) AS harm_agree,
               count(*) FILTER (WHERE j.abstained) AS abstained, max(j.created_at) AS last_judged
        FROM latest_reviews r JOIN judgments j ON j.message_id = r.message_id AND j.judge = ?
        GROUP BY version, r.harm_level, held_out
        """, [judge])
    versions: dict[str, dict] = {}
    for g in sorted(groups, key=lambda g: g["last_judged"], reverse=True):
        v = versions.setdefault(g["version"], {"version": g["version"], "verdicts": 0, "label_agree": 0,
                                               "harm_agree": 0, "abstained": 0, "held_out": 0,
                                               "held_out_agree": 0, "per_harm_level": {}})
        for key in ("verdicts", "label_agree", "harm_agree", "abstained"):
            v[key] += g[key]
        if g["held_out"]:
            v["held_out"] += g["verdicts"]
            v["held_out_agree"] += g["label_agree"]
        level = v["per_harm_level"].setdefault(g["harm_level"], {"verdicts": 0, "label_agree": 0})
        level["verdicts"] += g["verdicts"]
        level["label_agree"] += g["label_agree"]
    for v in versions.values():
        v["label_agreement"] = v["label_agree"] / v["verdicts"]
        v["harm_agreement"] = v["harm_agree"] / v["verdicts"]
        v["held_out_agreement"] = v["held_out_agree"] / v["held_out"] if v["held_out"] else None
        for level in v["per_harm_level"].values():
            level["label_agreement"] = level["label_agree"] / level["verdicts"]
    return list(versions.values())
