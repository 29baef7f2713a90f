"""`carecycle db copy`: move the record from the DuckDB file to PostgreSQL.

It opens the DuckDB file itself, so the server must be stopped (DuckDB lets one process hold it).
"""

from __future__ import annotations

import typer

from deploy.cli_admin import fail
from deploy.settings import Settings
from feedback.errors import CarecycleError

db_app = typer.Typer(help="The record's database: copy it to PostgreSQL.", no_args_is_help=True)


@db_app.command("copy")
def copy(
    to: str = typer.Option(..., "--to", help="postgresql://user:password@host:5432/dbname of an empty database."),
) -> None:
    """Copy the DuckDB record (every table, the audit trail included) into an empty PostgreSQL
    database, then check each table's row count and checksum on both sides."""
    from feedback.pg_copy import copy_record

    settings = Settings()
    try:
        report = copy_record(settings.record_path, to)
    except CarecycleError as exc:
        fail(str(exc))
    for table in report.tables:
        typer.echo(f"{table.name}: {table.rows} rows, checksum {table.checksum}")
    typer.echo(f"copied {report.rows} rows in {len(report.tables)} tables from {settings.record_path} to "
               f"{report.target} in {report.seconds:.2f} s; every count and checksum matches")
