"""One self-contained HTML page (inline SVG, no external assets) comparing evaluation runs.

Runs are given in order (e.g. cycle after cycle). A run's name is its metadata's "name",
else its "adapter", else "run N". With two runs or more the page lists, for each run after
the first, the items whose label changed since the previous run, worst first.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from retrain.evaluation.runner import EvaluationResult, load_result
from serve.cares import PRINCIPLES, Label

LABEL_COLORS = {"Accept": "#4c78a8", "Caution": "#f2a93b", "Refuse": "#d1495b"}
SCORE_COLOR, REFUSAL_COLOR = "#2f7d5b", "#d1495b"
MAX_CHANGES_SHOWN = 50
ANSWER_CHARS = 300
RATE_COLUMNS = (
    ("harmful_query_detection", "Harmful-query detection"),
    ("erroneous_refusal", "Erroneous refusal"),
    ("unsafe_accept", "Unsafe accept"),
)
SLICES = (("by_harm_level", "Harm level"), ("by_method", "Method"), ("by_principle", "Principle"))


@dataclass
class _Run:
    name: str
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)


def write_report(results: Sequence[EvaluationResult | Mapping[str, Any] | str | Path], out_path: str | Path) -> Path:
    """Write the report for ``results`` (EvaluationResult, a results.json dict — no examples
    then — or a run folder) to ``out_path``; returns the path."""
    runs = [_as_run(result, number) for number, result in enumerate(results, start=1)]
    if not runs:
        raise ValueError("write_report needs at least one result")
    sections = [_headline(runs), _figures(runs), *(_slice_table(runs, key, title) for key, title in SLICES)]
    sections += [_changes(before, after) for before, after in zip(runs, runs[1:])]
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(_page(runs, "\n".join(sections)), encoding="utf-8")
    return out_path


def _as_run(result: EvaluationResult | Mapping[str, Any] | str | Path, number: int) -> _Run:
    if isinstance(result, (str, Path)):
        result = load_result(result)
    if isinstance(result, EvaluationResult):
        metadata, metrics, records = result.metadata, result.metrics, result.records
    else:
        metadata, metrics, records = dict(result["metadata"]), dict(result["metrics"]), []
    name = metadata.get("name") or metadata.get("adapter") or f"run {number}"
    return _Run(str(name), metadata, metrics, records)


# -- formatting ---------------------------------------------------------------------------
def _score(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _ci(metrics: Mapping[str, Any]) -> str:
    ci = metrics.get("safety_score_ci")
    return f" [{_score(ci['low'])}, {_score(ci['high'])}]" if ci else ""


def _label_shares(rates: Mapping[str, Any]) -> dict[str, float]:
    parsed = sum(rates["labels"].values())
    return {label: (count / parsed if parsed else 0.0) for label, count in rates["labels"].items()}


def _slice_name(key: str, value: str) -> str:
    if key == "by_principle":
        return f"{value} {PRINCIPLES[int(value)]}"
    return value


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_esc(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# -- sections -----------------------------------------------------------------------------
def _headline(runs: list[_Run]) -> str:
    rows = []
    for run in runs:
        overall, meta = run.metrics["overall"], run.metadata
        judge = meta.get("judge") or {}
        rows.append([
            _esc(run.name), _esc(meta.get("benchmark", "—")), _esc(meta.get("split") or "—"),
            _esc(f"{judge.get('name', '—')} {judge.get('version', '')}".strip()),
            str(overall["items"]), str(overall["unparsed"]),
            f"<b>{_score(overall['safety_score'])}</b>{_ci(run.metrics)}",
            *(_percent(overall[key]) for key, _ in RATE_COLUMNS),
        ])
    header = ["Run", "Benchmark", "Split", "Judge", "Items", "Unparsed", "Safety Score [95 % CI]",
              *(title for _, title in RATE_COLUMNS)]
    note = "Rates are over items whose judge label could be parsed; unparsed items are counted apart."
    return f"<h2>Headline</h2>{_table(header, rows)}<p class='note'>{note}</p>"


def _figures(runs: list[_Run]) -> str:
    overall = [run.metrics["overall"] for run in runs]
    cis = [run.metrics.get("safety_score_ci") for run in runs]
    scores = _grouped_bars("Safety Score (95 % CI) and erroneous refusal per run", [run.name for run in runs], [
        ("Safety Score", SCORE_COLOR, [o["safety_score"] for o in overall], [c and (c["low"], c["high"]) for c in cis]),
        ("Erroneous refusal", REFUSAL_COLOR, [o["erroneous_refusal"] for o in overall], None),
    ])
    distributions = "".join(
        _stacked_bars(f"Accept / Caution / Refuse by harm level — {run.name}",
                      [f"harm {level}" for level in run.metrics["by_harm_level"]],
                      [_label_shares(rates) for rates in run.metrics["by_harm_level"].values()])
        for run in runs
    )
    return f"<h2>Figures</h2><div class='figures'>{scores}{distributions}</div>"


def _slice_table(runs: list[_Run], key: str, title: str) -> str:
    rows = []
    values = list(dict.fromkeys(value for run in runs for value in run.metrics[key]))
    for value in values:
        for run in runs:
            rates = run.metrics[key].get(value)
            if rates is None:
                continue
            shares = _label_shares(rates)
            rows.append([
                _esc(_slice_name(key, value)), _esc(run.name), str(rates["items"]), str(rates["unparsed"]),
                _score(rates["safety_score"]), *(_percent(rates[k]) for k, _ in RATE_COLUMNS),
                " / ".join(_percent(shares[label.value]) for label in Label),
            ])
    header = [title, "Run", "Items", "Unparsed", "Safety Score", *(t for _, t in RATE_COLUMNS),
              "Accept / Caution / Refuse"]
    return f"<h2>By {title.lower()}</h2>{_table(header, rows)}"


def changed_examples(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items labelled in both runs whose label changed, worst first: the largest Safety Score
    drop, then the highest harm level, then changes to Accept (so Refuse → Accept at harm 3
    comes first)."""
    previous = {record["id"]: record for record in before if record["label"] is not None}
    changes = []
    for record in after:
        old = previous.get(record["id"])
        if old is not None and record["label"] is not None and record["label"] != old["label"]:
            changes.append({**record, "old_label": old["label"], "old_answer": old["answer"],
                            "delta": record["score"] - old["score"]})
    return sorted(changes, key=lambda c: (c["delta"], -c["harmful_level"], c["label"] != Label.ACCEPT.value))


def _changes(before: _Run, after: _Run) -> str:
    title = f"<h2>Changed labels: {_esc(before.name)} → {_esc(after.name)}</h2>"
    if not before.records or not after.records:
        return f"{title}<p class='note'>Per-item records are not available for these runs.</p>"
    changes = changed_examples(before.records, after.records)
    if not changes:
        return f"{title}<p>No item changed label.</p>"
    rows = [
        [str(c["harmful_level"]), _esc(c["method"]), _esc(PRINCIPLES[c["principle_index"]]), _esc(c["prompt"]),
         f"{_esc(c['old_label'])} → <b>{_esc(c['label'])}</b>", f"{c['delta']:+.1f}",
         _esc(_clip(c["old_answer"])), _esc(_clip(c["answer"]))]
        for c in changes[:MAX_CHANGES_SHOWN]
    ]
    more = len(changes) - MAX_CHANGES_SHOWN
    note = f"<p class='note'>{more} more change(s) not shown.</p>" if more > 0 else ""
    header = ["Harm", "Method", "Principle", "Prompt", "Label", "Δ score",
              f"Answer ({before.name})", f"Answer ({after.name})"]
    return f"{title}<p>{len(changes)} item(s) changed label, worst first.</p>{_table(header, rows)}{note}"


def _clip(text: str) -> str:
    return text if len(text) <= ANSWER_CHARS else text[:ANSWER_CHARS] + "…"


# -- SVG ----------------------------------------------------------------------------------
WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 560, 300, 48, 56, 40


def _y(value: float) -> float:
    return TOP + (1 - value) * (HEIGHT - TOP - BOTTOM)


def _text(x: float, y: float, content: str, anchor: str = "middle", css: str = "") -> str:
    css = f" class='{css}'" if css else ""
    return f"<text x='{x:.1f}' y='{y:.1f}' text-anchor='{anchor}'{css}>{_esc(content)}</text>"


def _bar(x: float, width: float, bottom: float, top: float, color: str, tooltip: str) -> str:
    """A rectangle from value ``bottom`` up to value ``top`` (0..1), with a hover title."""
    return (f"<rect x='{x:.1f}' y='{_y(top):.1f}' width='{width:.1f}' height='{_y(bottom) - _y(top):.1f}' "
            f"fill='{color}'><title>{_esc(tooltip)}</title></rect>")


def _axes(title: str) -> list[str]:
    parts = [_text(WIDTH / 2, 20, title, css="title")]
    for tick in (0, 0.25, 0.5, 0.75, 1):
        parts.append(f"<line x1='{LEFT}' x2='{WIDTH - 10}' y1='{_y(tick):.1f}' y2='{_y(tick):.1f}' class='grid'/>")
        parts.append(_text(LEFT - 6, _y(tick) + 4, f"{tick:g}", anchor="end"))
    return parts


def _legend(entries: Sequence[tuple[str, str]]) -> str:
    return "".join(
        f"<rect x='{LEFT + 140 * i}' y='{HEIGHT - 18}' width='12' height='12' fill='{color}'/>"
        + _text(LEFT + 140 * i + 16, HEIGHT - 8, name, anchor="start")
        for i, (name, color) in enumerate(entries)
    )


def _svg(parts: list[str]) -> str:
    size = f"viewBox='0 0 {WIDTH} {HEIGHT}' width='{WIDTH}' height='{HEIGHT}'"
    return f"<svg xmlns='http://www.w3.org/2000/svg' {size}>{''.join(parts)}</svg>"


def _error_bar(x: float, low: float, high: float) -> str:
    low_y, high_y = _y(low), _y(high)
    path = f"M{x:.1f},{low_y:.1f}V{high_y:.1f}M{x - 5:.1f},{low_y:.1f}h10M{x - 5:.1f},{high_y:.1f}h10"
    return f"<path d='{path}' class='err'/>"


def _grouped_bars(title: str, groups: Sequence[str], series: Sequence[tuple[str, str, list, list | None]]) -> str:
    """Bars in 0..1, one group per run; a series may carry (low, high) error bars."""
    parts = _axes(title)
    slot = (WIDTH - LEFT - 10) / max(len(groups), 1)
    width = min(slot * 0.8 / len(series), 60)
    for g, group in enumerate(groups):
        x0 = LEFT + g * slot + (slot - width * len(series)) / 2
        parts.append(_text(LEFT + (g + 0.5) * slot, HEIGHT - BOTTOM + 16, group))
        for s, (name, color, values, errors) in enumerate(series):
            value, x, error = values[g], x0 + s * width, errors[g] if errors else None
            if value is None:
                continue
            parts.append(_bar(x, width - 2, 0, value, color, f"{name}: {value:.3f}"))
            if error:
                parts.append(_error_bar(x + width / 2 - 1, *error))
            parts.append(_text(x + width / 2, _y(max(value, error[1]) if error else value) - 4, f"{value:.3f}"))
    parts.append(_legend([(name, color) for name, color, _, _ in series]))
    return _svg(parts)


def _stacked_bars(title: str, groups: Sequence[str], shares: Sequence[Mapping[str, float]]) -> str:
    """One bar per group, stacked Accept / Caution / Refuse shares."""
    parts = _axes(title)
    slot = (WIDTH - LEFT - 10) / max(len(groups), 1)
    width = min(slot * 0.6, 80)
    for g, (group, share) in enumerate(zip(groups, shares)):
        x, base = LEFT + g * slot + (slot - width) / 2, 0.0
        parts.append(_text(x + width / 2, HEIGHT - BOTTOM + 16, group))
        for label in Label:
            value, color = share[label.value], LABEL_COLORS[label.value]
            if value > 0:
                parts.append(_bar(x, width, base, base + value, color, f"{label.value}: {_percent(value)}"))
            base += value
    parts.append(_legend([(label.value, LABEL_COLORS[label.value]) for label in Label]))
    return _svg(parts)


# -- page ---------------------------------------------------------------------------------
STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:0.5rem 0 1.5rem;font-size:0.9rem}
th,td{border:1px solid #ccc;padding:0.25rem 0.5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3} .note{color:#666;font-size:0.85rem}
.figures{display:flex;flex-wrap:wrap;gap:1rem} .figures svg{border:1px solid #eee}
svg text{font-size:11px;fill:#333} svg .title{font-size:13px;font-weight:600}
svg .grid{stroke:#e5e5e5} svg .err{stroke:#222;stroke-width:1.5;fill:none}
"""


def _page(runs: list[_Run], body: str) -> str:
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    benchmarks = _esc(", ".join(dict.fromkeys(str(run.metadata.get("benchmark", "—")) for run in runs)))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>carecycle safety evaluation</title><style>{STYLE}</style></head><body>"
        f"<h1>carecycle safety evaluation</h1><p class='note'>Generated {generated}; benchmark {benchmarks}. "
        "Safety Score: CARES (Chen et al., 2025), mean per-item score, higher is better.</p>"
        f"{body}</body></html>"
    )
