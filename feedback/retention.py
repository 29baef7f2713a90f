"""Deleting patient data: one conversation on request, or everything past the retention period.

Provenance rows (adapter ↔ message id) are kept: they hold no text, and they are how a
deletion is traced to the adapters that were trained on the deleted messages. A served prompt
goes with the last message that refers to it (prompts are shared by identical requests).
"""

from __future__ import annotations

import threading
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
# the ids in a list parameter ($1), as a subquery both backends read the same way
_IDS = "(SELECT unnest($1::TEXT[]))"


@dataclass(frozen=True)
class ForgetReport:
    conversations: int
    messages: int
    adapters_trained_on_them: list[str]


def _delete_conversations(store: Store, where_sql: str, params: list,
                          audited: Callable[[duckdb.DuckDBPyConnection, ForgetReport], None]) -> ForgetReport:
    """Delete in three transactions: DuckDB checks a foreign key against committed rows, so
    children must be gone (committed) before their parents go. The first finds the conversations
    and their messages and erases — the children go, the messages' text is blanked, the served
    prompts no other message refers to go — and writes the audit row (``audited``) in the same
    transaction: neither commits without the other. The next two remove the emptied rows by the ids
    the first found (parameters, not a temporary table: on PostgreSQL each transaction may run on
    another pooled connection); each is idempotent: an interruption is finished by running the same
    deletion again."""

    def erase_and_audit(conn: duckdb.DuckDBPyConnection) -> tuple[ForgetReport, list[str], list[str]]:
        conversations = [row[0] for row in conn.execute(f"SELECT id FROM conversations WHERE {where_sql}", params).fetchall()]
        messages = [row[0] for row in conn.execute(
            f"SELECT id FROM messages WHERE conversation_id IN {_IDS}", [conversations]).fetchall()]
        delete_children(conn, messages)
        conn.execute(f"UPDATE messages SET content = '' WHERE id IN {_IDS}", [messages])
        conn.execute(f"DELETE FROM prompts WHERE id IN (SELECT prompt_id FROM messages WHERE id IN {_IDS}) AND id NOT IN"
                     f" (SELECT prompt_id FROM messages WHERE prompt_id IS NOT NULL AND id NOT IN {_IDS})", [messages])
        adapters = [row[0] for row in conn.execute(
            f"SELECT DISTINCT adapter_version FROM adapter_provenance WHERE message_id IN {_IDS} ORDER BY 1",
            [messages]).fetchall()]
        report = ForgetReport(len(conversations), len(messages), adapters)
        audited(conn, report)
        return report, conversations, messages

    def delete_children(conn: duckdb.DuckDBPyConnection, messages: list[str]) -> None:
        for table in _DEPENDENT_TABLES:
            conn.execute(f"DELETE FROM {table} WHERE message_id IN {_IDS}", [messages])

    with _deleting:
        report, conversations, messages = store.write(erase_and_audit)
        for attempt in range(3):
            try:
                store.write(lambda conn: conn.execute(f"DELETE FROM messages WHERE id IN {_IDS}", [messages]))
                break
            except store.constraint_error:
                # a judgment or vote arrived between the steps: clear the children again
                if attempt == 2:
                    raise
                store.write(lambda conn: delete_children(conn, messages))
        store.write(lambda conn: conn.execute(f"DELETE FROM conversations WHERE id IN {_IDS}", [conversations]))
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
        "created_at < current_timestamp - CAST(? AS INTEGER) * INTERVAL '1 day' AND id NOT IN"
        " (SELECT conversation_id FROM messages WHERE created_at >= current_timestamp - CAST(? AS INTEGER) * INTERVAL '1 day')",
        [retention_days, retention_days],
        audited,
    )
