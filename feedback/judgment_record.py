"""Named queries for judgments: store them, remember failed attempts, find unjudged answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import duckdb

from feedback.chat_record import new_id
from feedback.store import Store, read_committed


@dataclass(frozen=True)
class JudgmentRow:
    message_id: str
    judge: str
    judge_version: str
    label: str | None
    harm_level: int | None
    confidence: float | None
    score: float | None
    unsafe_compliance: bool | None
    over_refusal: bool | None
    raw_output: str | None
    abstained: bool = False


class JudgmentRecord:
    def __init__(self, store: Store):
        self.store = store

    async def add(self, row: JudgmentRow) -> str:
        judgment_id = new_id("jdg")

        @read_committed  # appends a row and forgets this judge's failures on the answer
        def task(conn: duckdb.DuckDBPyConnection) -> str:
            conn.execute(
                "INSERT INTO judgments (id, message_id, judge, judge_version, label, harm_level, confidence,"
                " score, unsafe_compliance, over_refusal, raw_output, abstained) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [judgment_id, row.message_id, row.judge, row.judge_version, row.label, row.harm_level,
                 row.confidence, row.score, row.unsafe_compliance, row.over_refusal, row.raw_output, row.abstained],
            )
            conn.execute("DELETE FROM judge_attempts WHERE message_id = ? AND judge = ?", [row.message_id, row.judge])
            return judgment_id

        return await self.store.awrite(task)

    async def add_failure(self, message_id: str, judge: str, error: str) -> None:
        @read_committed  # an upsert: the row's key decides a race
        def task(conn: duckdb.DuckDBPyConnection) -> None:
            conn.execute(
                "INSERT INTO judge_attempts (message_id, judge, attempts, last_error) VALUES (?, ?, 1, ?)"
                " ON CONFLICT (message_id, judge) DO UPDATE SET attempts = judge_attempts.attempts + 1,"
                " last_error = excluded.last_error, last_at = now()",
                [message_id, judge, error],
            )

        await self.store.awrite(task)

    def unjudged(self, judge: str, retry_after_s: float, max_attempts: int, limit: int = 100) -> list[dict[str, Any]]:
        """Complete answers this judge has not labelled, oldest first, skipping answers whose
        last failure is recent or that failed too often. Each row brings the prompt the answer
        was served (``prompt``: its messages as JSON text)."""
        return self.store.read(
            """
            SELECT a.id AS message_id, a.content AS answer, p.messages AS prompt
            FROM messages a
            JOIN prompts p ON p.id = a.prompt_id
            LEFT JOIN judge_attempts f ON f.message_id = a.id AND f.judge = ?
            WHERE a.role = 'assistant' AND a.status = 'complete'
              AND NOT EXISTS (SELECT 1 FROM judgments j WHERE j.message_id = a.id AND j.judge = ?)
              AND (f.message_id IS NULL OR (f.attempts < ?
                   AND f.last_at < current_timestamp - CAST(? AS DOUBLE PRECISION) * INTERVAL '1 second'))
            ORDER BY a.created_at
            LIMIT ?
            """,
            [judge, judge, max_attempts, retry_after_s, limit],
        )

    def latest(self, message_id: str) -> list[dict[str, Any]]:
        return self.store.read("SELECT * FROM latest_judgments WHERE message_id = ? ORDER BY judge", [message_id])
