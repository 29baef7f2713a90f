"""The one object that owns the DuckDB file.

DuckDB lets a single process open a file read-write and locks everyone else out, so the
server process owns it through this store. Writes are serialised on one writer thread that
drains a queue of ``fn(connection)`` tasks, each in its own transaction; reads use cursors
of the same connection from any thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import re
import threading
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from feedback.errors import StoreError

T = TypeVar("T")
WriteTask = Callable[[duckdb.DuckDBPyConnection], T]

_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def migration_files() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every shipped migration, in order."""
    folder = resources.files("feedback") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(found)


def rows_as_dicts(result: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """The rows of an executed query as dicts keyed by column name."""
    columns = [d[0] for d in result.description]
    return [dict(zip(columns, row)) for row in result.fetchall()]


class Store:
    """Owner of the record's single read-write connection."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._tasks: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------
    def open(self) -> "Store":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = duckdb.connect(str(self.path))
        except duckdb.Error as exc:
            raise StoreError(
                f"cannot open the record at {self.path}: {exc}. If another carecycle process "
                "is running, stop it; if the file is damaged, restore it from a backup."
            ) from exc
        self._migrate()
        self._writer = threading.Thread(target=self._drain, name="carecycle-store-writer", daemon=True)
        self._writer.start()
        return self

    def close(self) -> None:
        if self._writer is not None:
            self._tasks.put(None)
            self._writer.join()
            self._writer = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> "Store":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ----------------------------------------------------------------------
    def _migrate(self) -> None:
        conn = self._connection()
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)"
        )
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        for version, name, sql in migration_files():
            if version in applied:
                continue
            conn.execute("BEGIN TRANSACTION")
            try:
                conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
                conn.execute("COMMIT")
            except duckdb.Error as exc:
                conn.execute("ROLLBACK")
                raise StoreError(f"migration {name} failed on {self.path}: {exc}") from exc

    def schema_version(self) -> int:
        return self.read_one("SELECT coalesce(max(version), 0) FROM schema_migrations")[0]

    # -- writes ----------------------------------------------------------------------
    def submit(self, task: WriteTask[T]) -> concurrent.futures.Future[T]:
        """Queue a write; it runs on the writer thread inside one transaction."""
        if self._writer is None:
            raise StoreError(f"the record at {self.path} is not open")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._tasks.put((task, future))
        return future

    def write(self, task: WriteTask[T]) -> T:
        return self.submit(task).result()

    async def awrite(self, task: WriteTask[T]) -> T:
        # shielded: a caller cancelled mid-write (a client that left) must not cancel the write itself
        return await asyncio.shield(asyncio.wrap_future(self.submit(task)))

    def _drain(self) -> None:
        conn = self._connection()
        while (item := self._tasks.get()) is not None:
            task, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                conn.execute("BEGIN TRANSACTION")
                result = task(conn)
                conn.execute("COMMIT")
            except BaseException as exc:  # the task's error goes to its caller, not the thread
                try:
                    conn.execute("ROLLBACK")
                except duckdb.Error:
                    pass
                future.set_exception(exc)
            else:
                future.set_result(result)

    # -- reads -----------------------------------------------------------------------
    def read(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        cursor = self._connection().cursor()
        try:
            return rows_as_dicts(cursor.execute(sql, params or []))
        finally:
            cursor.close()

    def read_one(self, sql: str, params: list[Any] | None = None) -> tuple | None:
        cursor = self._connection().cursor()
        try:
            return cursor.execute(sql, params or []).fetchone()
        finally:
            cursor.close()

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._conn is None:
            raise StoreError(f"the record at {self.path} is not open")
        return self._conn
