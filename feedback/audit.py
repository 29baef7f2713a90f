"""The append-only audit trail: who did what to which record, and when.

Audit rows are written inside the same transaction as the action they describe, so an action
without its audit row cannot exist. Nothing in carecycle updates or deletes audit rows.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from feedback.store import Store


def audit(conn: duckdb.DuckDBPyConnection, actor: str, action: str, target: str | None, **detail: Any) -> None:
    conn.execute(
        "INSERT INTO audit_log (actor, action, target, detail) VALUES (?, ?, ?, ?)",
        [actor, action, target, json.dumps(detail, default=str) if detail else None],
    )


def audit_rows(store: Store, limit: int = 100, actor: str | None = None, action: str | None = None) -> list[dict[str, Any]]:
    return store.read(
        "SELECT seq, created_at, actor, action, target, detail FROM audit_log"
        " WHERE (? IS NULL OR actor = ?) AND (? IS NULL OR action = ?)"
        " ORDER BY seq DESC LIMIT ?",
        [actor, actor, action, action, limit],
    )
