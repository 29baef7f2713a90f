"""`carecycle retrain|export|eval|adapters`: the learning loop from the command line.

Like the other record commands they open the record themselves: on the DuckDB file the server must
be stopped (while it runs, use the admin API or the dashboard: POST /api/admin/cycles, …); on
PostgreSQL they run beside it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from pathlib import Path

import typer

from deploy.cli_admin import CLI_ACTOR, fail, open_record
from deploy.settings import Settings
from feedback.errors import CarecycleError

adapters_app = typer.Typer(help="The adapter registry: list, show, promote, roll back.", no_args_is_help=True)
DEFAULT_EVAL_SPLIT = "test"  # `carecycle eval` reports; the test split is the one that reports


def _methods(method: str) -> tuple[str, ...]:
    if method not in ("kto", "dpo", "both"):
        fail(f"--method takes kto, dpo or both, not {method!r}")
    return ("kto", "dpo") if method == "both" else (method,)


def retrain(
    method: str = typer.Option("both", help="Which candidates: kto, dpo or both."),
    train_only: bool = typer.Option(False, "--train-only", help="Stop after training (no evaluation, no promotion)."),
) -> None:
    """Run a realignment cycle now: snapshot → datasets → training (→ evaluation → gate → promotion)."""
    from deploy.app import build_services
    from deploy.promotion import restore_active

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = Settings()
    try:
        services = build_services(settings)
    except CarecycleError as exc:
        fail(f"{exc} (while `carecycle serve` runs, trigger a cycle with POST /api/admin/cycles)")
    try:
        restore_active(services.engine, services.cycle.registry)  # candidates train and compare against it
        record = asyncio.run(services.cycle.run(f"cli:{CLI_ACTOR}", _methods(method), train_only=train_only))
    finally:
        services.close()
    typer.echo(json.dumps({"cycle": record["id"], "status": record["status"], **record["detail"].get("outcome", {})},
                          indent=2, default=str))
    for method, figures in record["detail"].get("train", {}).items():
        typer.echo(f"{method}: {figures.get('status')} {figures.get('reason') or ''}")
    for version, path in record["detail"].get("outcome", {}).get("candidates", {}).items():
        typer.echo(f"candidate {version}: {path}")


def export(
    kind: str = typer.Option(..., "--format", help="kto or dpo."),
    file_format: str = typer.Option("parquet", "--as", help="parquet or jsonl."),
    out: Path = typer.Option(..., help="Where to write the dataset."),
) -> None:
    """Write the KTO or DPO dataset of the current record (PHI scrubbed) for TRL or `datasets`."""
    from feedback.audit import audit
    from retrain.datasets import build_datasets, export_dataset, write_snapshot

    if kind not in ("kto", "dpo") or file_format not in ("parquet", "jsonl"):
        fail("--format takes kto or dpo; --as takes parquet or jsonl")
    settings = Settings()
    with open_record() as store:
        snapshot = write_snapshot(store, settings.data_dir / "exports" / "snapshots")
        build = build_datasets(snapshot.path)
        table = build.kto if kind == "kto" else build.dpo
        shutil.rmtree(snapshot.path)  # unscrubbed transcripts: only the scrubbed dataset stays
        unaudited = out.with_name(f".{out.name}.unaudited")
        export_dataset(table, unaudited, file_format, kind)

        def publish_audited(conn) -> None:  # the file appears in the audit row's transaction, or not at all
            audit(conn, CLI_ACTOR, "dataset.export", str(out), kind=kind, rows=table.num_rows,
                  snapshot_id=snapshot.snapshot_id)
            unaudited.replace(out)

        try:
            store.write(publish_audited)
        finally:
            unaudited.unlink(missing_ok=True)
    typer.echo(f"wrote {table.num_rows} {kind.upper()} rows to {out} (snapshot {snapshot.snapshot_id})")


def evaluate(
    adapter: str = typer.Option("none", help="`none` (the base model), a registry version, or an adapter folder."),
    benchmark: str = typer.Option("carecycle-safety", help="carecycle-safety, carecycle-real, cares-18k, or a Parquet/CSV/JSONL path."),
    split: str | None = typer.Option(None, help="Benchmark split (carecycle-*: train, validation or test); default: "
                                     "test where the benchmark has splits, the whole file where it has none."),
    judge: str = typer.Option("finetuned", help="self, external or finetuned."),
    limit: int | None = typer.Option(None, help="Only the first N prompts."),
    max_tokens: int = typer.Option(128, help="Answer length."),
    batch_size: int = typer.Option(8, help="Prompts generated together."),
    out: Path | None = typer.Option(None, help="Run folder (default under data/evaluations/); re-running resumes."),
) -> None:
    """CARES metrics for an adapter: Safety Score with CI, rates, slices, and an HTML report."""
    from tqdm import tqdm

    from deploy.app import build_engine, build_judge
    from retrain.evaluation.adapter_check import check_adapter_matches
    from retrain.evaluation.adapter_eval import evaluate_adapter
    from retrain.evaluation.report import write_report
    from serve.adapters import AdapterRef

    settings = Settings()
    try:
        items, split = _benchmark_items(benchmark, split, limit)
        folder = _adapter_folder(adapter, settings)
        if folder is not None:
            check_adapter_matches(folder, settings.model_source)  # refused before any generation
        engine = build_engine(settings)
        version = None if folder is None else f"eval-{Path(folder).name}"
        if folder is not None:
            engine.adapters.keep(AdapterRef(version, str(folder)))
        scorer = build_judge(judge, settings, engine)
    except CarecycleError as exc:
        fail(str(exc))
    run_dir = out or settings.data_dir / "evaluations" / f"{Path(adapter).name}-{Path(benchmark).stem}-{split or 'all'}"
    bar = tqdm(total=len(items), unit="prompt", desc=f"eval {adapter}")

    def progress(done: int, total: int, eta: float | None) -> None:
        bar.n = done
        bar.refresh()

    result = asyncio.run(evaluate_adapter(engine, version, items, scorer, run_dir, max_new_tokens=max_tokens,
                                          batch_size=batch_size, system_prompt=settings.system_prompt,
                                          progress=progress, metadata={"name": adapter, "benchmark": benchmark,
                                                                       "split": split}))
    bar.close()
    report = write_report([result], run_dir / "report.html")
    overall, ci = result.metrics["overall"], result.metrics.get("safety_score_ci") or {}
    typer.echo(f"Safety Score {_fmt(overall['safety_score'])} (95% CI {_fmt(ci.get('low'))}–{_fmt(ci.get('high'))}); "
               f"harmful-query detection {_fmt(overall['harmful_query_detection'])}; erroneous refusal "
               f"{_fmt(overall['erroneous_refusal'])}; unsafe accept {_fmt(overall['unsafe_accept'])}; "
               f"unparsed {overall['unparsed']}/{overall['items']}")
    for harm, rates in result.metrics["by_harm_level"].items():
        typer.echo(f"  harm {harm}: Safety Score {_fmt(rates['safety_score'])} over {rates['items']} prompts")
    typer.echo(f"results: {run_dir / 'results.json'}\nreport:  {report}")


def _benchmark_items(benchmark: str, split: str | None, limit: int | None) -> tuple[list, str | None]:
    """The items to evaluate and their split: ``split``, or by default the test split of a benchmark
    that has splits and all of a file without a split column (a user's own CARES file)."""
    from retrain.evaluation.benchmark import load_benchmark

    if split is None:
        items = load_benchmark(benchmark)
        if all(item.split is None for item in items):
            return items[:limit] if limit is not None else items, None
        split = DEFAULT_EVAL_SPLIT
    return load_benchmark(benchmark, split=split, limit=limit), split


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _adapter_folder(adapter: str, settings: Settings) -> Path | None:
    """None (the base model), a folder given as is, or a registry version's folder, checked
    against the checksum the registry recorded."""
    if adapter == "none":
        return None
    if Path(adapter).is_dir():
        return Path(adapter)
    from deploy.promotion import verify_registered
    from feedback.registry_record import RegistryRecord

    with open_record() as store:
        registered = RegistryRecord(store).adapter(adapter)
    verify_registered(registered)
    return Path(registered["path"])


@adapters_app.command("list")
def list_adapters() -> None:
    from feedback.registry_record import RegistryRecord

    with open_record() as store:
        for row in RegistryRecord(store).adapters():
            score = json.loads(row["metrics"])["overall"]["safety_score"] if row["metrics"] and "overall" in row["metrics"] else None
            typer.echo(f"{row['version']:32} {row['status']:10} {row['method'] or '-':4} parent={row['parent'] or 'base':24} "
                       f"safety={'-' if score is None else f'{score:.3f}'}  {row['created_at']:%Y-%m-%d %H:%M}")


@adapters_app.command("show")
def show_adapter(version: str) -> None:
    from feedback.registry_record import RegistryRecord

    with open_record() as store:
        typer.echo(json.dumps(RegistryRecord(store).adapter(version), indent=2, default=str))


@adapters_app.command("promote")
def promote_adapter(version: str) -> None:
    """Make VERSION active (checksum verified); the server serves it from its next start."""
    from deploy.promotion import promote
    from feedback.registry_record import RegistryRecord

    with open_record() as store:
        changed = promote(None, RegistryRecord(store), version, CLI_ACTOR)
    typer.echo(json.dumps(changed))


@adapters_app.command("rollback")
def rollback_adapter() -> None:
    """Make the previous version active again (the base model if there is none)."""
    from deploy.promotion import rollback
    from feedback.registry_record import RegistryRecord

    with open_record() as store:
        changed = rollback(None, RegistryRecord(store), CLI_ACTOR)
    typer.echo(json.dumps(changed))
