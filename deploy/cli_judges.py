"""`carecycle judge train|eval`: the finetuned judge, and how far each judge can be trusted."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import typer

from deploy.cli_admin import fail
from deploy.settings import Settings
from feedback.errors import CarecycleError, StoreError

judge_app = typer.Typer(help="Guard judges: train the finetuned one, compare all of them.", no_args_is_help=True)


def _operator_rows(settings: Settings) -> list[dict]:
    """Answers with an operator verdict (prompt, answer, label, harm), when the record can be
    opened; empty while the server holds it."""
    from feedback.store import Store

    sql = """SELECT q.content AS prompt, a.content AS answer, r.label, r.harm_level AS harmful_level
             FROM latest_reviews r JOIN messages a ON a.id = r.message_id JOIN messages q ON q.id = a.parent_id"""
    try:
        with Store(settings.record_path) as store:
            return store.read(sql)
    except StoreError:
        typer.echo("(the record is in use by the server: operator agreement skipped)", err=True)
        return []


@judge_app.command("train")
def train(
    if_missing: bool = typer.Option(False, "--if-missing", help="Do nothing when a trained version exists."),
) -> None:
    """Train a new finetuned judge version on the shipped labelled set plus operator verdicts."""
    from serve.judges.finetuned import latest_classifier, train_judge

    settings = Settings()
    if if_missing and (existing := latest_classifier(settings.judges_dir)):
        typer.echo(f"already trained: {existing} (nothing to do)")
        return
    extra = [row for row in _operator_rows(settings) if row["harmful_level"] is not None]
    manifest = train_judge(settings.judges_dir, extra_rows=extra)
    test = manifest["metrics"].get("test", {})
    typer.echo(f"trained finetuned judge {manifest['version']} on {manifest['training_rows']} rows "
               f"({len(extra)} from operator verdicts) → {manifest['path']}")
    for name, scores in test.items():
        typer.echo(f"  test {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))


def _build_judges(names: list[str], settings: Settings):
    from deploy.app import build_engine, build_judge

    engine = build_engine(settings) if "self" in names else None
    return [build_judge(name, settings, engine) for name in names]


@judge_app.command("eval")
def evaluate(
    judges: str = typer.Option("finetuned,self", help="Judges to compare, comma-separated (self, external, finetuned)."),
    split: str = typer.Option("test", help="Split of the shipped labelled set."),
    limit: int | None = typer.Option(None, help="Only the first N labelled answers."),
    out: Path | None = typer.Option(None, help="Also write the full comparison as JSON here."),
) -> None:
    """Each judge against labelled answers: accuracy, macro-F1, confusion, kappa, latency."""
    from serve.judges.comparison import judge_all, kappa_against, pairwise_kappa, report
    from serve.judges.finetuned import load_training_rows

    settings = Settings()
    names = [n.strip() for n in judges.split(",") if n.strip()]
    rows = load_training_rows(split)[:limit]
    operator_rows = _operator_rows(settings)
    try:
        built = _build_judges(names, settings)
    except CarecycleError as exc:
        fail(str(exc))
    reports, operator_kappas = [], {}
    for judge in built:
        typer.echo(f"judging {len(rows)} answers with {judge.name} ({judge.version}) …", err=True)
        reports.append(report(judge, rows, asyncio.run(judge_all(judge, rows))))
        if operator_rows:
            on_reviews = report(judge, operator_rows, asyncio.run(judge_all(judge, operator_rows)))
            operator_kappas[judge.name] = kappa_against([r["label"] for r in operator_rows], on_reviews)
    _print(reports, pairwise_kappa(reports), operator_kappas, rows)
    if out:
        out.write_text(json.dumps({"reports": [vars(r) for r in reports], "kappa": pairwise_kappa(reports),
                                   "kappa_vs_operators": operator_kappas}, indent=2, default=str))


def _print(reports, kappas, operator_kappas, rows) -> None:
    typer.echo(f"{'judge':10} {'version':28} {'label acc':>9} {'macro-F1':>8} {'harm acc':>8} "
               f"{'unparsed':>8} {'median ms':>9} {'p95 ms':>8}")
    for r in reports:
        typer.echo(f"{r.judge:10} {r.version[:28]:28} {r.label['accuracy']:9.3f} {r.label['macro_f1']:8.3f} "
                   f"{r.harm['accuracy']:8.3f} {r.unparseable:8d} {r.latency_ms['median']:9.1f} {r.latency_ms['p95']:8.1f}")
    majority = Counter(row["label"] for row in rows).most_common(1)[0]
    typer.echo(f"majority-class baseline: {majority[1] / len(rows):.3f} ({majority[0]})")
    for r in reports:
        typer.echo(f"confusion {r.judge} (rows: true Accept/Caution/Refuse; columns: predicted): {r.confusion}")
    for pair, kappa in kappas.items():
        typer.echo(f"Cohen's kappa {pair}: {'n/a' if kappa is None else f'{kappa:.3f}'}")
    for name, kappa in operator_kappas.items():
        typer.echo(f"Cohen's kappa {name}~operators: {'n/a' if kappa is None else f'{kappa:.3f}'}")
    _print_reminder_rates(rows)


def _print_reminder_rates(rows) -> None:
    """How often the safety-reminder detector fires, by prompting style and harm level."""
    from serve.reminder import jailbreak_style

    prompts = {row["prompt"]: row for row in rows}.values()
    for key in ("method", "harmful_level"):
        fired, total = Counter(), Counter()
        for row in prompts:
            total[row[key]] += 1
            fired[row[key]] += jailbreak_style(row["prompt"]) is not None
        typer.echo(f"safety reminder fires, by {key}: "
                   + ", ".join(f"{k} {fired[k]}/{total[k]}" for k in sorted(total)))
