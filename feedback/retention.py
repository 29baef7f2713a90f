"""Deleting patient data: one conversation on request, or everything past the retention period.

Provenance rows (adapter ↔ message id) are kept: they hold no text, and they are how a
deletion is traced to the adapters that were trained on the deleted messages. A served prompt
goes with the last message that refers to it (prompts are shared by identical requests).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from feedback.audit import audit
from feedback.errors import NotFoundError
from feedback.store import Store

# one deletion at a time (a forget request and the hourly purge must not interleave their steps)
_deleting = threading.Lock()
# children before parents: the foreign keys point from these tables to messages
_DEPENDENT_TABLES = ("feedback", "judgments", "reviews", "judge_attempts")


@dataclass(frozen=True)
class ForgetReport:
    conversations: int
    messages: int
    adapters_trained_on_them: list[str]


def _delete_conversations(store: Store, where_sql: str, params: list,
                          audited: Callable[[duckdb.DuckDBPyConnection, ForgetReport], None]) -> ForgetReport:
    """Delete in three transactions: DuckDB checks a foreign key against committed rows, so
    children must be gone (committed) before their parents go. The first erases — the children
    go, the messages' text is blanked, the served prompts no other message refers to go — and
    writes the audit row (``audited``) in the same transaction: neither commits without the other.
    The next two remove the emptied rows; each is idempotent: an interruption is finished by
    running the same deletion again."""

    doomed, doomed_messages = (f"{name}_{uuid.uuid4().hex[:8]}" for name in ("doomed", "doomed_messages"))

    def erase_and_audit(conn: duckdb.DuckDBPyConnection) -> ForgetReport:
        conn.execute(f"CREATE TEMP TABLE {doomed} AS SELECT id FROM conversations WHERE {where_sql}", params)
        conn.execute(f"CREATE TEMP TABLE {doomed_messages} AS"
                     f" SELECT id, prompt_id FROM messages WHERE conversation_id IN (SELECT id FROM {doomed})")
        delete_children(conn)
        conn.execute(f"UPDATE messages SET content = '' WHERE id IN (SELECT id FROM {doomed_messages})")
        conn.execute(f"DELETE FROM prompts WHERE id IN (SELECT prompt_id FROM {doomed_messages}) AND id NOT IN"
                     f" (SELECT prompt_id FROM messages WHERE prompt_id IS NOT NULL"
                     f"  AND id NOT IN (SELECT id FROM {doomed_messages}))")
        report = ForgetReport(
            conn.execute(f"SELECT count(*) FROM {doomed}").fetchone()[0],
            conn.execute(f"SELECT count(*) FROM {doomed_messages}").fetchone()[0],
            [row[0] for row in conn.execute("SELECT DISTINCT adapter_version FROM adapter_provenance"
                                            f" WHERE message_id IN (SELECT id FROM {doomed_messages}) ORDER BY 1").fetchall()])
        audited(conn, report)
        return report

    def delete_children(conn: duckdb.DuckDBPyConnection) -> None:
        for table in _DEPENDENT_TABLES:
            conn.execute(f"DELETE FROM {table} WHERE message_id IN (SELECT id FROM {doomed_messages})")

    def delete_messages(conn: duckdb.DuckDBPyConnection) -> None:
        conn.execute(f"DELETE FROM messages WHERE id IN (SELECT id FROM {doomed_messages})")

    with _deleting:
        try:
            report = store.write(erase_and_audit)
            for attempt in range(3):
                try:
                    store.write(delete_messages)
                    break
                except duckdb.ConstraintException:
                    # a judgment or vote arrived between the steps: clear the children again
                    if attempt == 2:
                        raise
                    store.write(delete_children)
            store.write(lambda conn: conn.execute(f"DELETE FROM conversations WHERE id IN (SELECT id FROM {doomed})"))
        finally:
            store.write(lambda conn: conn.execute(f"DROP TABLE IF EXISTS {doomed}; DROP TABLE IF EXISTS {doomed_messages}"))
    return report


def forget_conversation(store: Store, actor: str, conversation_id: str) -> ForgetReport:
    if not store.read("SELECT 1 FROM conversations WHERE id = ?", [conversation_id]):
        raise NotFoundError(f"unknown conversation {conversation_id!r}")

    def audited(conn: duckdb.DuckDBPyConnection, report: ForgetReport) -> None:
        audit(conn, actor, "conversation.forget", conversation_id, messages=report.messages,
              adapters_trained_on_it=report.adapters_trained_on_them)

    return _delete_conversations(store, "id = ?", [conversation_id], audited)


def purge_expired(store: Store, actor: str, retention_days: int) -> ForgetReport:
    """Delete every conversation whose last message is older than ``retention_days``."""

    def audited(conn: duckdb.DuckDBPyConnection, report: ForgetReport) -> None:
        if report.conversations:
            audit(conn, actor, "retention.purge", None, retention_days=retention_days,
                  conversations=report.conversations, messages=report.messages,
                  adapters_trained_on_them=report.adapters_trained_on_them)

    return _delete_conversations(
        store,
        "created_at < current_timestamp - to_days(CAST(? AS INTEGER)) AND id NOT IN"
        " (SELECT conversation_id FROM messages WHERE created_at >= current_timestamp - to_days(CAST(? AS INTEGER)))",
        [retention_days, retention_days],
        audited,
    )
