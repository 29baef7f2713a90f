"""The one object that owns the DuckDB file.

DuckDB lets a single process open a file read-write and locks everyone else out, so the
server process owns it through this store. Writes are serialised on one writer thread that
drains a bounded queue of ``fn(connection)`` tasks; reads use cursors of the same connection
from any thread.

Group commit: the writer takes what is queued (up to ``max_batch`` tasks, waiting at most
``batch_wait_s`` for more) and runs it in one transaction, so one commit pays for many
writes. The outcome is what running the tasks one by one in queue order would give: DuckDB
has no savepoints, so when a task raises, the transaction is rolled back, that task alone
fails, and the rest of the batch runs again without it (so a task may run more than once:
it does database work only). A caller learns its result only
after the commit: acknowledged still means committed. A full queue refuses at once
(``StoreBusyError``) instead of growing without bound.

Rows in batches: consecutive queued ``BatchWrite``s with the same ``run_many`` go to one call
of it with all their rows (one statement for many rows instead of one per row). It answers
each row on its own: a row it refuses (e.g. an unknown id) fails only its caller. If the call
raises, the transaction is rolled back and those rows run again one by one, so a row that
breaks the statement fails alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Generic, TypeVar

import duckdb

from feedback.errors import StoreBusyError, StoreError

T = TypeVar("T")
R = TypeVar("R")
WriteTask = Callable[[duckdb.DuckDBPyConnection], T]
QueuedWrite = tuple[WriteTask, concurrent.futures.Future]


@dataclass(frozen=True)
class BatchWrite(Generic[R, T]):
    """A write of one row that the writer may run together with its queued neighbours.

    ``run_many(conn, rows)`` writes ``rows`` in order and returns one outcome per row: its
    result, or the exception that row's caller gets (a row it refuses must have written
    nothing). Called on its own (one row, any backend), the write returns or raises that outcome.
    """

    run_many: Callable[[Any, list[R]], list[T | BaseException]]
    row: R

    @property
    def read_committed(self) -> bool:
        """Whether ``run_many`` is marked ``read_committed``: its rows run at that level too."""
        return getattr(self.run_many, "read_committed", False)

    def __call__(self, conn: Any) -> T:
        outcome = self.run_many(conn, [self.row])[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


W = TypeVar("W", bound=Callable[..., Any])


def read_committed(task: W) -> W:
    """Mark a write task whose outcome holds at READ COMMITTED: what it reads cannot change under
    it, or keys, foreign keys and ON CONFLICT decide the race (rows appended, counters upserted).
    PostgreSQL runs it at that level instead of SERIALIZABLE, so writers that cannot contradict
    each other never fail to serialise; the DuckDB file has one writer and ignores the mark."""
    task.read_committed = True  # type: ignore[attr-defined]
    return task


_MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


def migration_files(dialect: str = "") -> list[tuple[int, str, str]]:
    """(version, name, sql) for every shipped migration, in order: DuckDB's, or those of
    ``dialect`` (a subfolder, e.g. "postgresql")."""
    folder = resources.files("feedback") / "migrations"
    if dialect:
        folder = folder / dialect
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

    dialect = "duckdb"  # named queries that differ per backend are keyed by it
    constraint_error = duckdb.ConstraintException  # what a write that breaks a key or foreign key raises

    def __init__(self, path: Path | str, max_queued: int = 10_000, max_batch: int = 256, batch_wait_s: float = 0.001):
        self.path = Path(path)
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._tasks: queue.Queue = queue.Queue(maxsize=max_queued)
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
        """Queue a write; it runs on the writer thread and its future resolves once committed."""
        if self._writer is None:
            raise StoreError(f"the record at {self.path} is not open")
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            self._tasks.put_nowait((task, future))
        except queue.Full:
            raise StoreBusyError(
                f"the record at {self.path} has {self._tasks.maxsize} writes waiting; try again shortly",
                retry_after_s=1.0,
            ) from None
        return future

    def write(self, task: WriteTask[T]) -> T:
        return self.submit(task).result()

    async def awrite(self, task: WriteTask[T]) -> T:
        # shielded: a caller cancelled mid-write (a client that left) must not cancel the write itself
        return await asyncio.shield(asyncio.wrap_future(self.submit(task)))

    def _drain(self) -> None:
        conn = self._connection()
        closing = False
        while not closing:
            batch, closing = self._next_batch()
            self._commit_batch(conn, [(t, f) for t, f in batch if f.set_running_or_notify_cancel()])

    def _next_batch(self) -> tuple[list[QueuedWrite], bool]:
        """Block for one task, then take what else is queued: up to max_batch, waiting at most
        batch_wait_s. True as second value once close() asked the writer to stop."""
        batch: list[QueuedWrite] = []
        item = self._tasks.get()
        deadline = time.monotonic() + self.batch_wait_s
        while item is not None:
            batch.append(item)
            if len(batch) >= self.max_batch:
                return batch, False
            try:
                item = self._tasks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return batch, False
        return batch, True

    def _commit_batch(self, conn: duckdb.DuckDBPyConnection, batch: list[QueuedWrite]) -> None:
        """Run ``batch`` in one transaction, batchable rows grouped; a task that raises fails
        alone and the others run again (a group that raises runs again row by row)."""
        groups = _row_groups(batch)
        while groups:
            outcomes: list[list[Any]] = []
            try:
                conn.execute("BEGIN TRANSACTION")
                for group in groups:
                    outcomes.append(_run_group(conn, group))
            except BaseException as exc:  # the task's error goes to its caller, not the thread
                _rollback(conn)
                failed = len(outcomes)
                if len(groups[failed]) > 1:
                    groups[failed:failed + 1] = [[item] for item in groups[failed]]
                else:
                    groups[failed][0][1].set_exception(exc)
                    del groups[failed]
                continue
            try:
                conn.execute("COMMIT")
            except BaseException as exc:
                _rollback(conn)
                self._commit_alone(conn, [item for group in groups for item in group], self._unsaved(exc))
                return
            for group, results in zip(groups, outcomes):
                for (_, future), outcome in zip(group, results):
                    _settle(future, outcome, refused=len(group) > 1)
            return

    def _unsaved(self, exc: BaseException) -> BaseException:
        """A failed COMMIT (a full disk, an I/O error) as its caller sees it: a StoreError (503)."""
        if not isinstance(exc, duckdb.Error):
            return exc
        error = StoreError(f"the record at {self.path} could not save this write, so none of it was kept ({exc}); "
                           "free disk space or repair the file system, then retry")
        error.__cause__ = exc
        return error

    def _commit_alone(self, conn: duckdb.DuckDBPyConnection, batch: list[QueuedWrite], exc: BaseException) -> None:
        """A batch whose COMMIT failed: each task once more in its own transaction, so the
        failure reaches only the callers it belongs to."""
        if len(batch) == 1:
            batch[0][1].set_exception(exc)
            return
        for item in batch:
            self._commit_batch(conn, [item])

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


def _row_groups(batch: list[QueuedWrite]) -> list[list[QueuedWrite]]:
    """The batch in order, consecutive BatchWrites of the same ``run_many`` in one group."""
    groups: list[list[QueuedWrite]] = []
    for item in batch:
        task, previous = item[0], groups[-1][-1][0] if groups else None
        if isinstance(task, BatchWrite) and isinstance(previous, BatchWrite) and task.run_many is previous.run_many:
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _run_group(conn: duckdb.DuckDBPyConnection, group: list[QueuedWrite]) -> list[Any]:
    """One outcome per task of the group: a lone task runs as itself, a group of rows in one call."""
    if len(group) == 1:
        return [group[0][0](conn)]
    outcomes = group[0][0].run_many(conn, [task.row for task, _ in group])
    if len(outcomes) != len(group):
        raise StoreError(f"{group[0][0].run_many.__qualname__} gave {len(outcomes)} outcomes for {len(group)} rows")
    return outcomes


def _settle(future: concurrent.futures.Future, outcome: Any, refused: bool) -> None:
    """Tell the caller: its result, or (``refused``: from a group's ``run_many``) the exception it was refused with."""
    if refused and isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _rollback(conn: duckdb.DuckDBPyConnection) -> None:
    try:
        conn.execute("ROLLBACK")
    except duckdb.Error:  # nothing to roll back: BEGIN itself failed
        pass
