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
    """Answers with an operator verdict (message id, prompt, answer, label, harm), when the
    record can be opened; empty while the server holds the DuckDB file."""
    from deploy.record import record_store
    from serve.judges.agreement import operator_verdicts

    try:
        with record_store(settings) as store:
            return operator_verdicts(store)
    except StoreError as exc:
        if settings.database_url:
            fail(str(exc))
        typer.echo("(the record is in use by the server: operator verdicts skipped)", err=True)
        return []


@judge_app.command("train")
def train(
    if_missing: bool = typer.Option(False, "--if-missing", help="Do nothing when an active version exists."),
) -> None:
    """Train a new finetuned judge version (a few minutes of CPU) on the shipped labelled files
    plus operator verdicts; it becomes active only if it agrees with people better."""
    from serve.judges.finetuned import active_classifier, train_judge

    settings = Settings()
    if if_missing and (existing := active_classifier(settings.judges_dir)):
        typer.echo(f"already trained: {existing} (nothing to do)")
        return
    try:
        manifest = train_judge(settings.judges_dir, _operator_rows(settings))
    except CarecycleError as exc:
        fail(str(exc))
    data, comparison = manifest["data"], manifest["comparison"]
    typer.echo(f"trained finetuned judge {manifest['version']} in {manifest['train_seconds']:.0f} s on "
               f"{data['label_rows']} answers ({data['operator_rows']} operator verdicts; "
               f"{data['operator_held_out']} held out) → {manifest['path']}")
    typer.echo(f"temperature {manifest['temperature']:.3f}, abstains below confidence {manifest['threshold']:.3f}")
    for name, figures in [("validation", manifest["metrics"]["validation"]), *manifest["metrics"]["test"].items()]:
        typer.echo(f"  {name:28} {_headline(figures)}")
    verdict = "activated" if manifest["activated"] else f"not better: {comparison['previous']} stays active"
    typer.echo(f"agreement (label, harm) on {comparison['on']} ({comparison['rows']} rows): new "
               f"{_pair(comparison['new'])}" + (f", {comparison['previous']} {_pair(comparison['previous_agreement'])}"
                                                 if comparison["previous"] else "") + f" → {verdict}")


def _pair(agreement) -> str:
    return "/".join(f"{value:.3f}" for value in agreement)


def _headline(figures: dict) -> str:
    if not figures.get("items"):
        return f"no answered items (abstained {figures['abstained']})"
    return (f"accuracy {figures['accuracy']:.3f}, macro-F1 {figures['macro_f1']:.3f}, kappa {figures['kappa']:.3f}, "
            f"harm accuracy {figures['harm_accuracy']:.3f}, abstained {figures['abstention_rate']:.1%} "
            f"({figures['items']} answered)")


def _build_judges(names: list[str], settings: Settings):
    from deploy.app import build_engine, build_judge

    engine = build_engine(settings) if "self" in names else None
    return [build_judge(name, settings, engine) for name in names]


@judge_app.command("eval")
def evaluate(
    judges: str = typer.Option("finetuned,self", help="Judges to compare, comma-separated (self, external, finetuned)."),
    labelled: Path | None = typer.Option(None, help="Labelled answers to score against (CARES columns + answer + "
                                                    "label; .jsonl, .csv or .parquet). Default: the shipped --split."),
    split: str = typer.Option("test", help="Split of the shipped labelled files (without --labelled)."),
    limit: int | None = typer.Option(None, help="Only the first N labelled answers."),
    out: Path | None = typer.Option(None, help="Also write the full comparison as JSON here."),
) -> None:
    """Each judge against labelled answers: accuracy, macro-F1, Cohen's kappa, harm accuracy
    (overall and per harm level), confusion, abstention rate, latency."""
    from serve.judges.comparison import judge_all, kappa_against, pairwise_kappa, report
    from serve.judges.finetuned import load_training_rows
    from serve.judges.labelled import read_labelled

    settings = Settings()
    names = [n.strip() for n in judges.split(",") if n.strip()]
    try:
        rows = (read_labelled(labelled) if labelled else load_training_rows(split))[:limit]
        built = _build_judges(names, settings)
    except CarecycleError as exc:
        fail(str(exc))
    operator_rows = _operator_rows(settings)
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
    typer.echo("figures over the answers each judge did not abstain on; abstained: share of all answers")
    typer.echo(f"{'judge':10} {'version':12} {'accuracy':>8} {'macro-F1':>8} {'kappa':>6} {'harm acc':>8} "
               f"{'abstained':>9} {'unparsed':>8} {'median ms':>9} {'p95 ms':>8}")
    for r in reports:
        f = r.figures
        typer.echo(f"{r.judge:10} {r.version[:12]:12} {f.get('accuracy', 0):8.3f} {f.get('macro_f1', 0):8.3f} "
                   f"{f.get('kappa', 0):6.3f} {f.get('harm_accuracy', 0):8.3f} {f['abstention_rate']:9.1%} "
                   f"{r.unparseable:8d} {r.latency_ms['median']:9.1f} {r.latency_ms['p95']:8.1f}")
    majority = Counter(row["label"] for row in rows).most_common(1)[0]
    typer.echo(f"majority-class baseline: {majority[1] / len(rows):.3f} ({majority[0]})")
    for r in reports:
        per_level = ", ".join(f"{level}: {_level(f)}" for level, f in r.figures["per_harm_level"].items())
        typer.echo(f"{r.judge} per harm level (accuracy / harm accuracy / answered): {per_level}")
        typer.echo(f"confusion {r.judge} (rows: true Accept/Caution/Refuse; columns: predicted): {r.figures['confusion']}")
    for pair, kappa in kappas.items():
        typer.echo(f"Cohen's kappa {pair}: {'n/a' if kappa is None else f'{kappa:.3f}'}")
    for name, kappa in operator_kappas.items():
        typer.echo(f"Cohen's kappa {name}~operators: {'n/a' if kappa is None else f'{kappa:.3f}'}")
    _print_reminder_rates(rows)


def _level(figures: dict) -> str:
    if not figures["items"]:
        return "—"
    return f"{figures['accuracy']:.2f} / {figures['harm_accuracy']:.2f} / {figures['items']}"


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
