"""Snapshots: the record's tables a cycle needs, as Parquet files, written by the server.

The server process owns the DuckDB file, so it writes the snapshot (one read transaction on a
cursor of the store's connection: the files agree with each other), and everything downstream
opens the Parquet files with a fresh in-memory DuckDB connection — never the live file.

Layout: ``<root>/<snapshot id>/{conversations,messages,served_prompts,feedback,judgments,
reviews}.parquet`` and ``manifest.json`` (written last; a folder without one is not a snapshot).
Format 2 added ``served_prompts``, the record's ``prompts`` table (the name ``prompts`` is the
dataset builder's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from feedback.errors import CarecycleError
from feedback.store import Store

if TYPE_CHECKING:  # psycopg is imported only where the record is on PostgreSQL
    import psycopg

    from feedback.pg_store import PgStore

MANIFEST = "manifest.json"
FORMAT_VERSION = 2

# table name in the snapshot -> the SELECT that fills it, run against the live record
TABLES: dict[str, str] = {
    "conversations": "SELECT * FROM conversations",
    "messages": "SELECT * FROM messages",
    # the prompt every answer was served (messages.prompt_id)
    "served_prompts": "SELECT * FROM prompts",
    # the current vote of each user on each message
    "feedback": "SELECT * FROM current_feedback",
    # the latest judgment of each judge on each message (raw output left behind)
    "judgments": "SELECT * EXCLUDE (raw_output) FROM latest_judgments",
    # the latest operator review of each message
    "reviews": "SELECT * FROM latest_reviews",
}
_SOURCES = sorted({re.search(r"FROM (\w+)", select).group(1) for select in TABLES.values()})  # what they read


class SnapshotError(CarecycleError):
    """A snapshot folder that is missing, incomplete or of an unknown format."""


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: str
    path: Path
    created_at: str  # ISO 8601, UTC
    row_counts: dict[str, int]
    schema_version: int | None = None

    def manifest(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("path")
        data["format"] = FORMAT_VERSION
        data["files"] = {name: f"{name}.parquet" for name in self.row_counts}
        return data


def sql_string(text: str) -> str:
    """A SQL string literal (COPY and read_parquet take no parameters for their paths)."""
    return "'" + text.replace("'", "''") + "'"


def new_snapshot_id(now: datetime) -> str:
    return f"snap-{now.strftime('%Y%m%dT%H%M%SZ')}-{uuid.uuid4().hex[:8]}"


def copy_tables(conn: duckdb.DuckDBPyConnection, folder: Path) -> dict[str, int]:
    """COPY every snapshot table into ``folder``; returns the row count of each."""
    counts = {}
    for name, select in TABLES.items():
        target = sql_string(str(folder / f"{name}.parquet"))
        counts[name] = conn.execute(f"COPY ({select}) TO {target} (FORMAT parquet)").fetchall()[0][0]
    return counts


def write_manifest(info: SnapshotInfo) -> None:
    (info.path / MANIFEST).write_text(json.dumps(info.manifest(), indent=2) + "\n")


def write_snapshot(store: Store | PgStore, out_dir: Path) -> SnapshotInfo:
    """Write a snapshot of the live record under ``out_dir/<snapshot id>/``.

    On DuckDB it runs in the server process, on a cursor of the store's connection inside one
    read transaction: the files agree with each other, and the writer thread goes on serving
    chats meanwhile. On PostgreSQL see ``_copy_from_postgresql``. The folder gets its final
    name only once every file and the manifest are written.
    """
    now = datetime.now(timezone.utc)
    snapshot_id = new_snapshot_id(now)
    out_dir = Path(out_dir)
    staging = out_dir / f".{snapshot_id}.partial"
    staging.mkdir(parents=True)
    try:
        copy = _copy_from_postgresql if store.dialect == "postgresql" else _copy_from_duckdb
        version, counts = copy(store, staging)
        write_manifest(SnapshotInfo(snapshot_id, staging, now.isoformat(), counts, version))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final = out_dir / snapshot_id
    os.replace(staging, final)
    return SnapshotInfo(snapshot_id, final, now.isoformat(), counts, version)


def _copy_from_duckdb(store: Store, staging: Path) -> tuple[int, dict[str, int]]:
    # a cursor is a connection of its own to the same database, usable from this thread
    cursor = store.write(lambda conn: conn.cursor())
    try:
        cursor.execute("BEGIN TRANSACTION")
        version = cursor.execute("SELECT max(version) FROM schema_migrations").fetchall()[0][0]
        counts = copy_tables(cursor, staging)
        cursor.execute("COMMIT")
    finally:
        cursor.close()
    return version, counts


def _copy_from_postgresql(store: PgStore, staging: Path) -> tuple[int, dict[str, int]]:
    """Every source of TABLES streamed out of PostgreSQL with COPY … TO STDOUT (CSV, in chunks,
    no row-by-row Python), all in one REPEATABLE READ transaction so the files agree; then the
    same TABLES queries turn them into Parquet in DuckDB, as from the DuckDB record."""
    import psycopg

    dumps = staging / ".csv"
    dumps.mkdir()
    with store.connect() as conn:
        conn.isolation_level, conn.read_only = psycopg.IsolationLevel.REPEATABLE_READ, True
        version, columns = _dump_sources(conn, dumps)
    duck = duckdb.connect(":memory:")
    try:
        for source, typed in columns.items():
            types = ", ".join(f"{sql_string(name)}: {sql_string(data_type)}" for name, data_type in typed)
            # PostgreSQL writes NULL unquoted and an empty string as "": only the unquoted one is NULL
            duck.execute(f"CREATE VIEW {source} AS SELECT * FROM read_csv({sql_string(str(dumps / f'{source}.csv'))},"
                         f" auto_detect = false, header = false, delim = ',', quote = '\"', escape = '\"', columns = {{{types}}},"
                         " allow_quoted_nulls = false)")
        counts = copy_tables(duck, staging)
    finally:
        duck.close()
        shutil.rmtree(dumps, ignore_errors=True)
    return version, counts


def _dump_sources(conn: psycopg.Connection, dumps: Path) -> tuple[int, dict[str, list[tuple[str, str]]]]:
    """CSV files of every source, in one transaction; returns the schema version and each
    source's (column, type) list."""
    with conn.transaction():
        conn.execute("SET LOCAL TimeZone = 'UTC'")
        version = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
        columns = {source: conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = %s ORDER BY ordinal_position", (source,)).fetchall() for source in _SOURCES}
        for source in _SOURCES:
            with open(dumps / f"{source}.csv", "wb") as out, \
                    conn.cursor().copy(f"COPY (SELECT * FROM {source}) TO STDOUT (FORMAT csv)") as copy:
                for chunk in copy:
                    out.write(chunk)
    return version, columns


def read_manifest(snapshot_dir: Path) -> dict[str, Any]:
    path = Path(snapshot_dir) / MANIFEST
    if not path.is_file():
        raise SnapshotError(f"{snapshot_dir} is not a snapshot: it has no {MANIFEST} (unfinished or wrong folder)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise SnapshotError(
            f"snapshot {snapshot_dir} has format {manifest.get('format')!r}; this build reads {FORMAT_VERSION}"
        )
    missing = [f for f in manifest["files"].values() if not (Path(snapshot_dir) / f).is_file()]
    if missing:
        raise SnapshotError(f"snapshot {snapshot_dir} lacks {', '.join(missing)}")
    return manifest


def open_snapshot(snapshot_dir: Path, threads: int | None = None) -> tuple[duckdb.DuckDBPyConnection, dict[str, Any]]:
    """A fresh in-memory connection with one view per snapshot table, and the manifest."""
    manifest = read_manifest(snapshot_dir)
    con = duckdb.connect(":memory:")
    con.execute("SET preserve_insertion_order = false")  # every result that leaves is ORDERed
    if threads:
        con.execute(f"SET threads = {int(threads)}")
    for name, file in manifest["files"].items():
        path = sql_string(str(Path(snapshot_dir) / file))
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet({path})")
    return con, manifest
