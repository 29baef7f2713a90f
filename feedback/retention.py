"""Deleting patient data: one conversation on request, or everything past the retention period.

Provenance rows (adapter ↔ message id) are kept: they hold no text, and they are how a
deletion is traced to the adapters that were trained on the deleted messages.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from feedback.audit import audit
from feedback.errors import NotFoundError
from feedback.store import Store

# children before parents: the foreign keys point from these tables to messages
_DEPENDENT_TABLES = ("feedback", "judgments", "reviews", "judge_attempts")


@dataclass(frozen=True)
class ForgetReport:
    conversations: int
    messages: int
    adapters_trained_on_them: list[str]


def _delete_conversations(store: Store, where_sql: str, params: list) -> ForgetReport:
    """Delete in three transactions: DuckDB checks a foreign key against committed rows, so
    children must be gone (committed) before their parents go. Each step is idempotent: an
    interruption is finished by running the same deletion again."""

    def children(conn: duckdb.DuckDBPyConnection) -> list[str]:
        conn.execute(f"CREATE OR REPLACE TEMP TABLE doomed AS SELECT id FROM conversations WHERE {where_sql}", params)
        conn.execute("CREATE OR REPLACE TEMP TABLE doomed_messages AS"
                     " SELECT id FROM messages WHERE conversation_id IN (SELECT id FROM doomed)")
        for table in _DEPENDENT_TABLES:
            conn.execute(f"DELETE FROM {table} WHERE message_id IN (SELECT id FROM doomed_messages)")
        return [row[0] for row in conn.execute(
            "SELECT DISTINCT adapter_version FROM adapter_provenance"
            " WHERE message_id IN (SELECT id FROM doomed_messages) ORDER BY 1").fetchall()]

    adapters = store.write(children)
    messages = store.write(lambda conn: conn.execute(
        "DELETE FROM messages WHERE id IN (SELECT id FROM doomed_messages)").fetchone()[0])
    conversations = store.write(lambda conn: conn.execute(
        "DELETE FROM conversations WHERE id IN (SELECT id FROM doomed)").fetchone()[0])
    return ForgetReport(conversations, messages, adapters)


def forget_conversation(store: Store, actor: str, conversation_id: str) -> ForgetReport:
    if not store.read("SELECT 1 FROM conversations WHERE id = ?", [conversation_id]):
        raise NotFoundError(f"unknown conversation {conversation_id!r}")
    report = _delete_conversations(store, "id = ?", [conversation_id])
    store.write(lambda conn: audit(conn, actor, "conversation.forget", conversation_id, messages=report.messages,
                                   adapters_trained_on_it=report.adapters_trained_on_them))
    return report


def purge_expired(store: Store, actor: str, retention_days: int) -> ForgetReport:
    """Delete every conversation whose last message is older than ``retention_days``."""

    report = _delete_conversations(
        store,
        "created_at < current_timestamp - to_days(CAST(? AS INTEGER)) AND id NOT IN"
        " (SELECT conversation_id FROM messages WHERE created_at >= current_timestamp - to_days(CAST(? AS INTEGER)))",
        [retention_days, retention_days],
    )
    if report.conversations:
        store.write(lambda conn: audit(
            conn, actor, "retention.purge", None, retention_days=retention_days, conversations=report.conversations,
            messages=report.messages, adapters_trained_on_them=report.adapters_trained_on_them))
    return report
