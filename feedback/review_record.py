"""Named queries for operator review: the risk-ordered queue, transcripts, verdicts."""

from __future__ import annotations

from typing import Any

import duckdb

from feedback.audit import audit
from feedback.chat_record import new_id
from feedback.errors import ConflictError, NotFoundError
from feedback.store import Store, rows_as_dicts

# Riskiest first, by expected harm: each judgment's (1 − CARES score), weighted by the request's
# harm level and discounted by the judge's uncertainty — a judgment held with confidence c counts
# c·(1 − score) + (1 − c)·0.5, an abstention (or an unparsed output: confidence 0) mostly the
# 0.5 of not knowing — times (1 + harm) / 4. So a Caution at harm 3 (score 0) comes first, an
# abstention before a confident Accept at harm 0. Each answer takes its riskiest judge. After the
# judged risks, thumbs-down; then a stable pseudo-random sample of the rest, so that judge
# calibration can be checked ({answer_hash}: a stable number of at least 0 per answer id, per dialect).
_QUEUE_SQL = """
WITH judged AS (
    SELECT message_id, judge, label, harm_level, abstained,
           (1 + coalesce(harm_level, 1.5)) / 4
             * (sure * (1 - coalesce(score, 0.5)) + (1 - sure) * 0.5) AS expected_harm,
           CASE WHEN abstained THEN 'abstained' WHEN score IS NULL THEN 'unparsed'
                WHEN unsafe_compliance THEN 'unsafe_compliance' WHEN over_refusal THEN 'over_refusal'
                WHEN score < 1 THEN 'low_score' END AS judge_reason
    FROM (SELECT *, CASE WHEN abstained THEN coalesce(confidence, 0) WHEN score IS NULL THEN 0
                         ELSE coalesce(confidence, 1) END AS sure
          FROM latest_judgments) AS weighed
), risk AS (
    SELECT message_id, max(harm_level) AS harm, max(expected_harm) AS expected_harm,
           (array_agg(judge_reason ORDER BY expected_harm DESC, judge) FILTER (WHERE judge_reason IS NOT NULL))[1]
             AS judge_reason,
           string_agg(judge || ':' || coalesce(label, '?') || CASE WHEN abstained THEN ' (abstained)' ELSE '' END,
                      ', ' ORDER BY judge) AS labels
    FROM judged GROUP BY message_id
), votes AS (
    SELECT message_id, count(*) FILTER (WHERE rating = 'down') AS downs, count(*) FILTER (WHERE rating = 'up') AS ups
    FROM current_feedback GROUP BY message_id
), candidates AS (
    SELECT a.id AS message_id, a.conversation_id, a.created_at, j.harm, j.labels,
           -- to 4 decimals (PostgreSQL rounds a double only to an integer)
           round(j.expected_harm * 10000) / 10000 AS expected_harm, coalesce(v.downs, 0) AS downs, coalesce(v.ups, 0) AS ups,
           coalesce(j.judge_reason, CASE WHEN v.downs > 0 THEN 'thumbs_down' ELSE 'calibration' END) AS reason
    FROM messages a
    LEFT JOIN risk j ON j.message_id = a.id
    LEFT JOIN votes v ON v.message_id = a.id
    WHERE a.role = 'assistant' AND a.status = 'complete'
      AND NOT EXISTS (SELECT 1 FROM reviews r WHERE r.message_id = a.id)
)
SELECT * FROM candidates
WHERE reason <> 'calibration' OR {answer_hash} % 100 < ?
ORDER BY reason = 'calibration', expected_harm DESC NULLS LAST, downs DESC,
         CASE WHEN reason = 'calibration' THEN {answer_hash} END, created_at
LIMIT ?
"""
QUEUE_SQL = {
    "duckdb": _QUEUE_SQL.format(answer_hash="hash(message_id)"),
    "postgresql": _QUEUE_SQL.format(answer_hash="(hashtext(message_id)::BIGINT + 2147483648)"),  # int4 made non-negative
}


class ReviewRecord:
    def __init__(self, store: Store):
        self.store = store

    def queue(self, limit: int = 50, calibration_percent: int = 10) -> list[dict[str, Any]]:
        return self.store.read(QUEUE_SQL[self.store.dialect], [calibration_percent, limit])

    def open_item(self, operator: str, message_id: str) -> dict[str, Any]:
        """The whole conversation around an answer, its judgments, votes and reviews. The read
        itself is audited, in the same transaction."""

        def task(conn: duckdb.DuckDBPyConnection) -> dict[str, Any]:
            answer = _one(conn, "SELECT * FROM messages WHERE id = ? AND role = 'assistant'", [message_id])
            if answer is None:
                raise NotFoundError(f"unknown answer {message_id!r}")
            item = {
                "answer": answer,
                "transcript": _all(conn, "SELECT id, parent_id, role, content, status, created_at FROM messages"
                                         " WHERE conversation_id = ? ORDER BY created_at, role DESC",
                                   [answer["conversation_id"]]),
                "judgments": _all(conn, "SELECT judge, judge_version, label, harm_level, confidence, score,"
                                        " unsafe_compliance, over_refusal FROM latest_judgments WHERE message_id = ?"
                                        " ORDER BY judge", [message_id]),
                "votes": _all(conn, "SELECT rating, reason, comment FROM current_feedback WHERE message_id = ?",
                              [message_id]),
                "reviews": _all(conn, "SELECT id, operator_id, label, harm_level, verdict, judge_correct,"
                                      " corrected_answer, created_at FROM reviews WHERE message_id = ?"
                                      " ORDER BY created_at DESC", [message_id]),
            }
            audit(conn, operator, "transcript.read", answer["conversation_id"], message_id=message_id)
            return item

        return self.store.write(task)

    def add_verdict(self, operator: str, message_id: str, verdict: dict[str, Any], seen_review_id: str | None) -> str:
        """Store a verdict. Last verdict wins and every verdict is kept; a verdict made without
        seeing a newer one by someone else is refused (409), so none is silently overwritten."""
        review_id = new_id("rev")

        def task(conn: duckdb.DuckDBPyConnection) -> str:
            if _one(conn, "SELECT 1 FROM messages WHERE id = ? AND role = 'assistant'", [message_id]) is None:
                raise NotFoundError(f"unknown answer {message_id!r}")
            latest = _one(conn, "SELECT id, operator_id FROM latest_reviews WHERE message_id = ?", [message_id])
            if latest is not None and latest["id"] != seen_review_id:
                raise ConflictError(
                    f"{latest['operator_id']} reviewed this answer after you opened it (review {latest['id']}); "
                    "reload it, then send your verdict again with seen_review_id set to that review"
                )
            conn.execute(
                "INSERT INTO reviews (id, message_id, operator_id, label, harm_level, verdict, judge_correct,"
                " corrected_answer) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [review_id, message_id, operator, verdict["label"], verdict["harm_level"], verdict["verdict"],
                 verdict.get("judge_correct"), verdict.get("corrected_answer")],
            )
            audit(conn, operator, "review.verdict", message_id, review_id=review_id, label=verdict["label"],
                  harm_level=verdict["harm_level"], verdict=verdict["verdict"],
                  corrected=verdict.get("corrected_answer") is not None)
            return review_id

        return self.store.write(task)


def _all(conn: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    return rows_as_dicts(conn.execute(sql, params))


def _one(conn: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> dict[str, Any] | None:
    rows = _all(conn, sql, params)
    return rows[0] if rows else None
