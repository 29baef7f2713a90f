"""`carecycle users|audit|forget`: administration straight on the record.

On the DuckDB file these open the file themselves, so the server must be stopped (DuckDB lets one
process hold the file); while it runs, use the admin API instead (`/api/admin/...`). On
PostgreSQL (CARECYCLE_DATABASE_URL) they run beside the servers.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager

import typer

from deploy.record import record_store
from deploy.settings import Settings
from feedback.errors import CarecycleError, StoreError

users_app = typer.Typer(help="Accounts and roles.", no_args_is_help=True)
CLI_ACTOR = "cli"
PASSWORD_VARIABLE = "CARECYCLE_NEW_USER_PASSWORD"  # `users create` for containers; not a setting of the server


def fail(message: str) -> None:
    typer.echo(f"carecycle: {message}", err=True)
    raise typer.Exit(code=2)


@contextmanager
def open_record():
    settings = Settings()
    try:
        with record_store(settings) as store:
            yield store
    except StoreError as exc:
        fail(str(exc) if settings.database_url else f"{exc} (while `carecycle serve` runs, use the admin API: /api/admin/...)")
    except CarecycleError as exc:
        fail(str(exc))


@users_app.command("create")
def create_user(
    user_id: str = typer.Argument(..., help="Account id (letters, digits, . _ - :)."),
    role: str = typer.Option("user", help="user, operator or admin."),
    password: bool = typer.Option(False, "--password", help="Also set a password (asked twice, never echoed)."),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Also set a password, read from the first line of standard input (scripts)."),
) -> None:
    """Create an account and print its API key (shown once). The first admin is made this way.
    A password also comes from CARECYCLE_NEW_USER_PASSWORD (containers)."""
    from feedback.accounts import Accounts

    secret = _new_password(password, password_stdin)
    if secret is not None and len(secret) < 12:
        fail("a password needs at least 12 characters")
    with open_record() as store:
        api_key = Accounts(store).create(CLI_ACTOR, user_id, role, secret)
    typer.echo(f"created {role} {user_id}; API key (shown once): {api_key}")


def _new_password(ask: bool, from_stdin: bool) -> str | None:
    """From the terminal (--password), standard input (--password-stdin) or the environment; one way only."""
    from_env = os.environ.get(PASSWORD_VARIABLE)
    if ask + from_stdin + (from_env is not None) > 1:
        fail(f"give the password one way: --password, --password-stdin or {PASSWORD_VARIABLE}")
    if ask:
        return typer.prompt("password", hide_input=True, confirmation_prompt=True)
    if from_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            fail("--password-stdin read no password: pipe it in, e.g. `printf '%s' \"$PW\" | carecycle users create ...`")
        return line
    return from_env


@users_app.command("list")
def list_users() -> None:
    from feedback.accounts import Accounts

    with open_record() as store:
        for row in Accounts(store).list():
            typer.echo(f"{row['id']:24} {row['role']:9} {'disabled' if row['disabled'] else ''}")


@users_app.command("role")
def set_role(user_id: str, role: str) -> None:
    """Change an account's role (audited)."""
    from feedback.accounts import Accounts

    with open_record() as store:
        Accounts(store).set_role(CLI_ACTOR, user_id, role)
    typer.echo(f"{user_id} is now {role}")


def audit(
    limit: int = typer.Option(50, help="How many rows, newest first."),
    actor: str | None = typer.Option(None, help="Only this actor."),
    action: str | None = typer.Option(None, help="Only this action, e.g. transcript.read."),
) -> None:
    """Show the audit trail: who read, judged, promoted, exported or deleted what, and when."""
    from feedback.audit import audit_rows

    with open_record() as store:
        for row in audit_rows(store, limit=limit, actor=actor, action=action):
            typer.echo(f"{row['created_at']:%Y-%m-%d %H:%M:%S}  {row['actor']:16} {row['action']:22} "
                       f"{row['target'] or '-':40} {row['detail'] or ''}")


def forget(conversation: str = typer.Option(..., "--conversation", help="The conversation id to delete.")) -> None:
    """Delete a conversation and say which adapters were trained on it."""
    from feedback.retention import forget_conversation

    with open_record() as store:
        report = forget_conversation(store, CLI_ACTOR, conversation)
    typer.echo(json.dumps(vars(report)))
    if report.adapters_trained_on_them:
        typer.echo("adapters trained on it (retrain without it, then retire them): "
                   + ", ".join(report.adapters_trained_on_them))
