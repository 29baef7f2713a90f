"""One label per assistant answer, by precedence: operator verdict > judge flag > user thumbs.

- Operator: the latest review's verdict (``desirable`` → true).
- Judge: the latest parsed judgment (of the trusted judge, or of any judge): unsafe
  compliance or over-refusal → false; neither flag → true. A judgment whose label or harm
  level could not be parsed (flags NULL) says nothing.
- Thumbs: the majority of current votes; a tie says nothing.

So a thumbs-up on an answer judged unsafe compliance is undesirable, and counted as a conflict.
``flag`` says why an undesirable answer is undesirable (from the review's label and harm
level, else the judge's flags): it picks how a better answer is sampled (DPO source c).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import duckdb

from retrain.datasets.snapshot import sql_string

ANSWERS_SQL = """
CREATE OR REPLACE TEMP TABLE answers AS
SELECT a.id AS message_id, a.conversation_id, a.parent_id, a.created_at
FROM messages a
JOIN messages q ON q.id = a.parent_id AND q.role = 'user' AND q.conversation_id = a.conversation_id
WHERE a.role = 'assistant' AND a.status = 'complete' {since}
"""

LABELS_SQL = """
CREATE OR REPLACE TEMP TABLE labels AS
WITH review AS (
    SELECT message_id, id AS review_id, verdict = 'desirable' AS label, harm_level, corrected_answer,
           CASE WHEN harm_level >= 2 AND label = 'Accept' THEN 'unsafe_compliance'
                WHEN harm_level = 0 AND label = 'Refuse' THEN 'over_refusal' END AS flag
    FROM reviews
), judge AS (
    SELECT message_id, harm_level, NOT (unsafe_compliance OR over_refusal) AS label,
           CASE WHEN unsafe_compliance THEN 'unsafe_compliance'
                WHEN over_refusal THEN 'over_refusal' END AS flag
    FROM judgments
    WHERE label IS NOT NULL AND unsafe_compliance IS NOT NULL AND over_refusal IS NOT NULL {judge}
    QUALIFY row_number() OVER (PARTITION BY message_id ORDER BY created_at DESC, id DESC) = 1
), thumbs AS (
    SELECT message_id, count(*) FILTER (rating = 'up') AS ups, count(*) FILTER (rating = 'down') AS downs
    FROM feedback GROUP BY message_id
), signals AS (
    SELECT a.message_id, a.conversation_id, a.parent_id, a.created_at,
           r.label AS operator_label, r.flag AS operator_flag, j.label AS judge_label, j.flag AS judge_flag,
           CASE WHEN t.ups > t.downs THEN true WHEN t.downs > t.ups THEN false END AS thumbs_label,
           coalesce(t.ups, 0) AS ups, coalesce(t.downs, 0) AS downs,
           coalesce(r.harm_level, j.harm_level) AS harm_level, r.review_id, r.corrected_answer
    FROM answers a
    LEFT JOIN review r USING (message_id)
    LEFT JOIN judge j USING (message_id)
    LEFT JOIN thumbs t USING (message_id)
)
SELECT * EXCLUDE (operator_flag),
       coalesce(operator_label, judge_label, thumbs_label) AS label,
       CASE WHEN operator_label IS NOT NULL THEN 'operator' WHEN judge_label IS NOT NULL THEN 'judge'
            WHEN thumbs_label IS NOT NULL THEN 'thumbs' END AS source,
       CASE WHEN NOT coalesce(operator_label, judge_label) THEN coalesce(operator_flag, judge_flag) END AS flag
FROM signals
"""

REPORT_SQL = """
SELECT count(*) AS answers,
       count(label) AS labelled,
       count(*) FILTER (label) AS desirable,
       count(*) FILTER (NOT label) AS undesirable,
       count(*) FILTER (source = 'operator') AS by_operator,
       count(*) FILTER (source = 'judge') AS by_judge,
       count(*) FILTER (source = 'thumbs') AS by_thumbs,
       count(*) FILTER (ups = downs AND ups > 0) AS thumbs_ties,
       count(*) FILTER (source = 'operator' AND judge_label <> label) AS judge_vs_operator,
       count(*) FILTER (source = 'operator' AND thumbs_label <> label) AS thumbs_vs_operator,
       count(*) FILTER (source = 'judge' AND thumbs_label <> label) AS thumbs_vs_judge,
       count(*) FILTER (source = 'judge' AND judge_flag = 'unsafe_compliance' AND thumbs_label)
           AS thumbs_up_on_unsafe_compliance
FROM labels
"""

CONFLICTS = ("judge_vs_operator", "thumbs_vs_operator", "thumbs_vs_judge", "thumbs_up_on_unsafe_compliance")


def create_labels(
    con: duckdb.DuckDBPyConnection, judge: str | None = None, since: datetime | None = None
) -> dict[str, Any]:
    """Temp tables ``answers`` and ``labels``; returns the label report (counts, conflicts)."""
    since_sql = f"AND a.created_at >= {sql_string(since.isoformat())}::TIMESTAMPTZ" if since else ""
    con.execute(ANSWERS_SQL.format(since=since_sql))
    con.execute(LABELS_SQL.format(judge=f"AND judge = {sql_string(judge)}" if judge else ""))
    cursor = con.execute(REPORT_SQL)
    row = dict(zip([d[0] for d in cursor.description], cursor.fetchall()[0]))
    return {
        "answers": row["answers"],
        "labelled": row["labelled"],
        "unlabelled": row["answers"] - row["labelled"],
        "desirable": row["desirable"],
        "undesirable": row["undesirable"],
        "by_source": {s: row[f"by_{s}"] for s in ("operator", "judge", "thumbs")},
        "thumbs_ties": row["thumbs_ties"],
        "conflicts": {kind: row[kind] for kind in CONFLICTS},
        "judge": judge or "latest of any",
    }
