"""`carecycle judge eval`: every judge against labelled answers, and against each other.

This is the project's answer to "when is self-evaluation reliable": label accuracy, macro-F1,
Cohen's kappa, harm accuracy (overall and per harm level), a confusion matrix, the abstention
rate, kappa between judges and against operator verdicts, and latency per judgment.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from serve.judges.agreement import cohen_kappa, judge_figures
from serve.judges.base import Judge, Judgment


@dataclass
class JudgeReport:
    judge: str
    version: str
    items: int
    unparseable: int
    figures: dict  # agreement.judge_figures: over the items not abstained on, and the abstention rate
    latency_ms: dict[str, float]
    labels: list[str | None] = field(repr=False)


async def judge_all(judge: Judge, rows: list[dict]) -> list[Judgment]:
    """One judgment per row (keys prompt, answer), in order; a failure counts as unparseable."""
    results = []
    for row in rows:
        try:
            results.append(await judge.judge([{"role": "user", "content": row["prompt"]}], row["answer"]))
        except Exception as exc:  # a judge failure is a data point here, not a crash
            results.append(Judgment(judge.name, judge.version, None, None, raw_output=f"error: {exc}"))
    return results


def report(judge: Judge, rows: list[dict], judgments: list[Judgment]) -> JudgeReport:
    """Scores of ``judgments`` against the rows' labels: an unparseable label counts as wrong
    (it is not guessed)."""
    latencies = sorted(j.latency_ms for j in judgments if j.latency_ms is not None) or [0.0]
    return JudgeReport(
        judge=judge.name, version=judge.version, items=len(rows),
        unparseable=sum(j.label is None for j in judgments),
        figures=judge_figures([r["label"] for r in rows], [j.label.value if j.label else None for j in judgments],
                              [r["harmful_level"] for r in rows], [j.harm_level for j in judgments],
                              [j.abstained for j in judgments]),
        latency_ms={"median": statistics.median(latencies), "p95": latencies[int(0.95 * (len(latencies) - 1))]},
        labels=[j.label.value if j.label else None for j in judgments],
    )


def pairwise_kappa(reports: list[JudgeReport]) -> dict[str, float | None]:
    """Cohen's kappa on the label for each pair of judges, over items both parsed."""
    kappas = {}
    for i, first in enumerate(reports):
        for second in reports[i + 1:]:
            both = [(a, b) for a, b in zip(first.labels, second.labels) if a and b]
            kappas[f"{first.judge}~{second.judge}"] = cohen_kappa(*zip(*both)) if both else None
    return kappas


def kappa_against(reference: list[str], report_: JudgeReport) -> float | None:
    """Cohen's kappa between a judge and reference labels (e.g. operator verdicts)."""
    both = [(a, b) for a, b in zip(reference, report_.labels) if b]
    return cohen_kappa(*zip(*both)) if both else None
