"""The record on PostgreSQL: the same interface as ``feedback.store.Store``, for several
processes sharing one record.

Where the DuckDB store has one writer thread, here each write task runs in its own
SERIALIZABLE transaction on a pooled connection: the database serialises writers from every
process, and a task that loses a serialisation race runs again after a jittered, growing pause
(tasks do database work only, as on DuckDB). Tasks marked ``read_committed`` (chat turns, answers,
votes, judgments, counters: rows appended or upserted, decided by keys) run at READ COMMITTED and so
never lose such a race. A caller learns its result only after COMMIT: acknowledged still means
committed.

While the server cannot be reached, every read and write fails at once with a
StoreUnavailableError (HTTP 503 with Retry-After) naming where the record is; the first request
after the server answers again replaces the pool, so a process recovers without a restart.

Tasks and reads use the record's SQL as written for DuckDB: ``?`` and ``$1`` placeholders are
turned into psycopg's here, parameters are bound on the client (so ``? IS NULL`` needs no type, as on
DuckDB), and JSON columns come back as text, as DuckDB returns them. SQL that only
DuckDB speaks (QUALIFY, list(), struct literals) still needs a PostgreSQL version.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool, PoolTimeout

from feedback.errors import StoreBusyError, StoreError, StoreUnavailableError
from feedback.store import migration_files, rows_as_dicts

T = TypeVar("T")
# any constant shared by every carecycle process: only one of them migrates at a time
_MIGRATION_LOCK = 0x6361726563796C65  # "carecycle"
_RETRIED = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)
_FIRST_PAUSE_S = 0.005  # before the second attempt at most; doubled before each next one
_PROBE_EVERY_S = 1.0  # while the server is unreachable, requests in between get the last probe's answer
_QUOTED = re.compile(r"""('[^']*'|"[^"]*")""")
_NUMBERED = re.compile(r"\$(\d+)")


@functools.lru_cache(maxsize=1024)
def pg_sql(sql: str) -> tuple[str, bool]:
    """DuckDB-style SQL as psycopg wants it, and whether it numbers its parameters: ``?`` becomes
    ``%s`` and ``$1`` becomes ``%(p1)s`` outside quotes; ``%`` is doubled everywhere."""
    parts = _QUOTED.split(sql.replace("%", "%%"))  # odd parts are quoted text or identifiers
    numbered = False
    for index in range(0, len(parts), 2):
        parts[index], count = _NUMBERED.subn(r"%(p\1)s", parts[index].replace("?", "%s"))
        numbered = numbered or count > 0
    return "".join(parts), numbered


def pg_query(sql: str, params: Sequence[Any] | None) -> tuple[str, Sequence[Any] | dict[str, Any]]:
    """(query, parameters) for psycopg from DuckDB-style SQL and its list of parameters."""
    text, numbered = pg_sql(sql)
    if numbered:
        return text, {f"p{n}": value for n, value in enumerate(params or (), start=1)}
    return text, params or ()


def where(url: str) -> str:
    """The database a URL names, without its password: user@host:port/dbname."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise StoreError(f"the database URL is not a PostgreSQL URL ({' '.join(str(exc).split())}); write it as postgresql://user:password@host:5432/dbname") from None
    return f"{parts.get('user', '')}@{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


class PgConnection:
    """What a write task gets: a connection in an open transaction that takes DuckDB-style SQL."""

    def __init__(self, conn: psycopg.Connection):
        self.raw = conn

    def execute(self, sql: str, params: list[Any] | tuple | None = None) -> psycopg.Cursor:
        return self.raw.execute(*pg_query(sql, params))


def configure_connection(conn: psycopg.Connection) -> None:
    """SERIALIZABLE transactions; JSON returned as its text, as DuckDB returns it."""
    conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
    for json_type in ("json", "jsonb"):
        conn.adapters.register_loader(json_type, TextLoader)


class PgStore:
    """The record in a PostgreSQL database, shared by any number of processes."""

    dialect = "postgresql"  # named queries that differ per backend are keyed by it
    constraint_error = pg_errors.IntegrityError  # what a write that breaks a key or foreign key raises

    def __init__(self, url: str, pool_size: int = 8, max_queued: int = 10_000, max_attempts: int = 5, connect_timeout_s: float = 5.0):
        self.url = url
        self.where = where(url)
        self.pool_size = pool_size
        self.max_attempts = max_attempts
        self.connect_timeout_s = connect_timeout_s
        self._pool: ConnectionPool | None = None
        self._server_lost = False  # the last request found the server unreachable: the next one tries it first
        self._last_probe: tuple[float, str] = (float("-inf"), "")  # when, and why it failed ("" if it did not)
        self._reconnecting = threading.Lock()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._slots = threading.BoundedSemaphore(max_queued)
        self._max_queued = max_queued

    # -- lifecycle -------------------------------------------------------------------
    def open(self) -> "PgStore":
        self.connect().close()
        self._pool = self._new_pool()
        self._executor = concurrent.futures.ThreadPoolExecutor(self.pool_size, thread_name_prefix="carecycle-pg-write")
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _new_pool(self) -> ConnectionPool:
        pool = ConnectionPool(
            self.url, min_size=1, max_size=self.pool_size, open=False, timeout=30.0,
            kwargs={"autocommit": True, "cursor_factory": psycopg.ClientCursor, "connect_timeout": self._connect_timeout()},
            configure=configure_connection, name="carecycle-record",
        )
        pool.open(wait=True, timeout=self.connect_timeout_s)
        return pool

    def _connect_timeout(self) -> int:
        return max(1, round(self.connect_timeout_s))

    def __enter__(self) -> "PgStore":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> psycopg.Connection:
        """A connection of its own (autocommit), or a StoreUnavailableError in one line: where, and
        what to check."""
        try:
            conn = psycopg.connect(self.url, autocommit=True, cursor_factory=psycopg.ClientCursor, connect_timeout=self._connect_timeout())
        except psycopg.Error as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreUnavailableError(
                f"cannot reach the PostgreSQL record at {self.where}: {reason}. Check that the server "
                "runs and listens there, the database exists, and the user and password are right."
            ) from None
        configure_connection(conn)
        return conn

    # -- schema ----------------------------------------------------------------------
    def _migrate(self) -> None:
        """Apply the missing PostgreSQL migrations, all in one transaction under an advisory
        lock, so replicas that start together migrate once; a record newer than this code is
        refused."""
        shipped = migration_files("postgresql")
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
                " applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp)"
            )
            applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations").fetchall()}
            newest = max((version for version, _, _ in shipped), default=0)
            if applied and max(applied) > newest:
                raise StoreError(
                    f"the record at {self.where} is at schema version {max(applied)}, newer than this "
                    f"carecycle ({newest}); upgrade carecycle before starting it on this record"
                )
            for version, name, sql in shipped:
                if version in applied:
                    continue
                try:
                    with conn.transaction():
                        conn.execute(sql)
                        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
                except psycopg.Error as exc:
                    raise StoreError(f"migration postgresql/{name} failed on {self.where}: {exc}") from exc

    def schema_version(self) -> int:
        return self.read_one("SELECT coalesce(max(version), 0) FROM schema_migrations")[0]

    # -- writes ----------------------------------------------------------------------
    def submit(self, task: Callable[[PgConnection], T]) -> concurrent.futures.Future[T]:
        """Run a write on a pool thread; its future resolves once committed."""
        if self._executor is None:
            raise StoreError(f"the record at {self.where} is not open")
        if not self._slots.acquire(blocking=False):
            raise StoreBusyError(f"the record at {self.where} has {self._max_queued} writes waiting; try again shortly", retry_after_s=1.0)
        future = self._executor.submit(self.write, task)
        future.add_done_callback(lambda _: self._slots.release())
        return future

    async def awrite(self, task: Callable[[PgConnection], T]) -> T:
        # shielded: a caller cancelled mid-write (a client that left) must not cancel the write itself
        return await asyncio.shield(asyncio.wrap_future(self.submit(task)))

    def write(self, task: Callable[[PgConnection], T]) -> T:
        """Run ``task`` in one transaction (SERIALIZABLE, or READ COMMITTED if it is marked
        ``read_committed``) and return its result after COMMIT; a serialisation failure or
        deadlock runs it again after a random pause of up to 5, 10, 20… ms, up to ``max_attempts``
        times in all."""
        isolation = (psycopg.IsolationLevel.READ_COMMITTED if getattr(task, "read_committed", False)
                     else psycopg.IsolationLevel.SERIALIZABLE)
        for attempt in range(1, self.max_attempts + 1):
            try:
                with self._connection() as conn:
                    conn.isolation_level = isolation  # taken by the BEGIN below
                    with conn.transaction():
                        return task(PgConnection(conn))
            except _RETRIED:
                if attempt == self.max_attempts:
                    raise StoreBusyError(f"the record at {self.where} is busy: this write conflicted "
                                         f"{attempt} times with others; try again shortly", retry_after_s=1.0) from None
                # apart at random, so that the writers that just collided do not collide again
                time.sleep(random.uniform(0, _FIRST_PAUSE_S * 2 ** (attempt - 1)))
            except psycopg.OperationalError as exc:
                raise StoreError(f"the record at {self.where} could not save this write, so none of it was kept ({exc}); "
                                 "check that the database server is up and reachable, then retry") from exc
        raise AssertionError("unreachable")  # the loop returns or raises

    # -- reads -----------------------------------------------------------------------
    def read(self, sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        with self._connection() as conn:
            return rows_as_dicts(conn.execute(*pg_query(sql, params)))

    def read_one(self, sql: str, params: list[Any] | None = None) -> tuple | None:
        with self._connection() as conn:
            return conn.execute(*pg_query(sql, params)).fetchone()

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection that answers, or a StoreUnavailableError at once while the server
        cannot be reached; once it answers again a fresh pool replaces the connections it dropped."""
        if self._pool is None:
            raise StoreError(f"the record at {self.where} is not open")
        pool = self._fresh_pool(self._pool) if self._server_lost else self._pool
        conn = self._getconn(pool)
        try:
            ConnectionPool.check_connection(conn)
        except psycopg.OperationalError:  # the server dropped it: restarted, or gone
            pool.putconn(conn)
            pool = self._fresh_pool(pool)
            conn = self._getconn(pool)
        try:
            yield conn
        except psycopg.OperationalError as exc:
            if not conn.closed:
                raise
            self._server_lost = True
            raise StoreUnavailableError(
                f"the PostgreSQL record at {self.where} dropped the connection ({str(exc).strip().splitlines()[0]}), "
                "so this request was not completed; retry shortly (carecycle reconnects by itself once the server answers)"
            ) from None
        finally:
            pool.putconn(conn)

    def _getconn(self, pool: ConnectionPool) -> psycopg.Connection:
        try:
            return pool.getconn()
        except PoolTimeout:
            self._probe()  # a StoreUnavailableError if the pool waited on a server that is gone
            raise StoreBusyError(f"no connection to the record at {self.where} came free; try again shortly", retry_after_s=1.0) from None

    def _probe(self) -> None:
        """Connect once: a StoreUnavailableError (and the next request probes first) if the server
        cannot be reached. A failed probe stands for a second, so that requests do not queue
        behind one connect timeout each when the server's host does not answer at all."""
        probed_at, failure = self._last_probe
        if failure and time.monotonic() - probed_at < _PROBE_EVERY_S:
            raise StoreUnavailableError(failure)
        try:
            self.connect().close()
        except StoreUnavailableError as exc:
            self._server_lost = True
            self._last_probe = (time.monotonic(), str(exc))
            raise
        self._last_probe = (time.monotonic(), "")

    def _fresh_pool(self, stale: ConnectionPool) -> ConnectionPool:
        """The pool to use instead of ``stale``, whose connections the server may have dropped: a
        new one if the server answers (``stale`` is closed; a thread that replaced it first wins),
        else a StoreUnavailableError naming where and what to check."""
        with self._reconnecting:
            if self._pool is stale:
                self._probe()
                self._pool = self._new_pool()
                stale.close(timeout=1.0)  # connections still lent out are closed as they come back
            self._server_lost = False
            return self._pool
