"""Move a DuckDB record into an empty PostgreSQL database and prove the copy equal.

The DuckDB file is first brought to the current schema (as starting the server would), then read
through a read-only connection; every table, the audit trail included, is streamed into
PostgreSQL with COPY in one transaction, parents before children. Afterwards each table is read
back from both sides and compared by row count and an order-independent checksum: the sum,
modulo 2**128, of the sha256 of each row's canonical text (timestamps in UTC, JSON as stored).
"""

from __future__ import annotations

import graphlib
import hashlib
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import psycopg

from feedback.errors import StoreError
from feedback.pg_store import PgStore, where
from feedback.store import Store

_BATCH_ROWS = 10_000
_SEQUENCE_DEFAULT = re.compile(r"nextval\('([a-z_][a-z0-9_]*)'")


@dataclass(frozen=True)
class TableCopy:
    name: str
    rows: int
    checksum: str  # hex; equal on both sides, or the copy raised


@dataclass(frozen=True)
class CopyReport:
    target: str  # user@host:port/dbname, without the password
    tables: list[TableCopy]
    seconds: float

    @property
    def rows(self) -> int:
        return sum(table.rows for table in self.tables)


def copy_record(record_path: Path, url: str) -> CopyReport:
    """Copy the DuckDB record at ``record_path`` into the empty database at ``url``; raise
    StoreError (naming the table) unless every table's count and checksum match."""
    started = time.perf_counter()
    target_name = where(url)  # a URL that is not one fails here, before anything is opened
    if not Path(record_path).exists():
        raise StoreError(f"no record at {record_path}: set CARECYCLE_DATA_DIR to the folder that holds carecycle.duckdb")
    _refuse_unless_empty(url)
    Store(record_path).open().close()  # migrate the source to the current schema
    PgStore(url).open().close()  # and the target
    source = duckdb.connect(str(record_path), read_only=True)
    try:
        with PgStore(url).connect() as target:
            tables = _copy_order(target, _base_tables(source))
            with target.transaction():
                for table in tables:
                    _copy_table(source, target, table)
                _advance_sequences(target)
            report = [_verify(source, target, table) for table in tables]
    finally:
        source.close()
    return CopyReport(target_name, report, time.perf_counter() - started)


def _refuse_unless_empty(url: str) -> None:
    """The target holds no tables, or only an empty carecycle record (a copy that failed)."""
    with PgStore(url).connect() as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'"
            " ORDER BY table_name").fetchall()]
        filled = [name for name in tables if name != "schema_migrations"
                  and conn.execute(f'SELECT EXISTS (SELECT 1 FROM "{name}")').fetchone()[0]]
        foreign = "schema_migrations" not in tables and tables
        if filled or foreign:
            shown = ", ".join((filled or tables)[:5]) + (", …" if len(filled or tables) > 5 else "")
            raise StoreError(f"{where(url)} is not empty (it has {shown}); copy into a new, empty database "
                             "(e.g. `createdb carecycle`) so that nothing in it is overwritten")


def _base_tables(source: duckdb.DuckDBPyConnection) -> list[str]:
    return [row[0] for row in source.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
        " AND table_type = 'BASE TABLE' AND table_name <> 'schema_migrations' ORDER BY table_name").fetchall()]


def _copy_order(target: psycopg.Connection, tables: list[str]) -> list[str]:
    """``tables`` with every table after those its foreign keys point at."""
    edges = target.execute(
        "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint WHERE contype = 'f'").fetchall()
    graph: dict[str, set[str]] = {table: set() for table in tables}
    for child, parent in edges:
        graph.setdefault(child, set()).add(parent)
    return [table for table in graphlib.TopologicalSorter(graph).static_order() if table in tables]


def _columns(source: duckdb.DuckDBPyConnection, table: str) -> str:
    names = [row[0] for row in source.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ?"
        " ORDER BY ordinal_position", [table]).fetchall()]
    return ", ".join(f'"{name}"' for name in names)


def _copy_table(source: duckdb.DuckDBPyConnection, target: psycopg.Connection, table: str) -> None:
    columns = _columns(source, table)
    result = source.execute(f'SELECT {columns} FROM "{table}"')
    with target.cursor().copy(f'COPY "{table}" ({columns}) FROM STDIN') as copy:
        for row in _batches(result):
            copy.write_row(row)


def _advance_sequences(target: psycopg.Connection) -> None:
    """Each sequence behind a column default continues after the largest copied value."""
    defaults = target.execute(
        "SELECT table_name, column_name, column_default FROM information_schema.columns"
        " WHERE table_schema = 'public' AND column_default LIKE 'nextval(%'").fetchall()
    for table, column, default in defaults:
        sequence = _SEQUENCE_DEFAULT.match(default).group(1)
        target.execute(f'SELECT setval(%s, coalesce(max("{column}"), 0) + 1, false) FROM "{table}"', (sequence,))


def _verify(source: duckdb.DuckDBPyConnection, target: psycopg.Connection, table: str) -> TableCopy:
    select = f'SELECT {_columns(source, table)} FROM "{table}"'
    source_rows, source_sum = fingerprint(_batches(source.execute(select)))
    target_rows, target_sum = fingerprint(_batches(target.execute(select)))
    if (source_rows, source_sum) != (target_rows, target_sum):
        raise StoreError(f"the copy of {table} differs from the DuckDB record ({source_rows} rows, checksum "
                         f"{source_sum} there; {target_rows} rows, {target_sum} in PostgreSQL); "
                         "drop the target database, create it empty and copy again")
    return TableCopy(table, source_rows, source_sum)


def _batches(result) -> Iterable[tuple]:
    while batch := result.fetchmany(_BATCH_ROWS):
        yield from batch


def fingerprint(rows: Iterable[tuple]) -> tuple[int, str]:
    """(count, order-independent checksum) of rows as either backend returns them."""
    count, total = 0, 0
    for row in rows:
        digest = hashlib.sha256(json.dumps([_canonical(value) for value in row]).encode()).digest()
        total = (total + int.from_bytes(digest[:16], "big")) % 2**128
        count += 1
    return count, f"{total:032x}"


def _canonical(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    return value
