"""Which record a carecycle process opens: the DuckDB file in the data directory (the embedded
default), or the PostgreSQL database at CARECYCLE_DATABASE_URL (several replicas, one worker).
The server and every CLI command that reads or writes the record choose through here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from deploy.settings import Settings
from feedback.store import Store

if TYPE_CHECKING:
    from feedback.pg_store import PgStore


def record_store(settings: Settings) -> Store | PgStore:
    """The record the settings name, not yet opened (psycopg is imported only for PostgreSQL)."""
    if settings.database_url:
        from feedback.pg_store import PgStore

        return PgStore(settings.database_url, max_queued=settings.write_queue_limit)
    return Store(settings.record_path, max_queued=settings.write_queue_limit)


def record_name(settings: Settings) -> str:
    """Where the record is, for messages: the DuckDB file, or user@host:port/dbname (no password)."""
    if settings.database_url:
        from feedback.pg_store import where

        return where(settings.database_url)
    return str(settings.record_path)
