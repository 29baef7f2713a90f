"""Prompts rebuilt from the record, and the scrubbed texts every row is made of.

The record keeps each user message and every answer to it (siblings share ``parent_id``).
The conversation an answer continued is rebuilt by ``created_at``: system and user messages,
plus, for each earlier user message, the answer the user saw last before writing the next one
(the latest complete answer created before it) — sibling answers and failed (error) answers
are left out. A prompt is that thread up to and including the user message being answered;
it is the same for all the siblings answering it.

Texts are scrubbed once each, into ``texts`` (idx, key, role, text, chars, defect, h); rows
refer to them by ``idx`` until they are assembled (``assemble.py``).
"""

from __future__ import annotations

from typing import Any

import duckdb

from retrain.datasets.hygiene import DEFECT_SQL, DEFECTIVE
from retrain.datasets.phi import scrub_table

SYSTEM_KEY = "__system_prompt__"

THREAD_SQL = """
CREATE OR REPLACE TEMP TABLE thread AS
WITH scope AS (SELECT DISTINCT conversation_id FROM labels WHERE label IS NOT NULL),
convo AS (SELECT m.* EXCLUDE (content) FROM messages m SEMI JOIN scope USING (conversation_id)),
questions AS (
    SELECT id, lead(created_at) OVER (PARTITION BY conversation_id ORDER BY created_at, id) AS next_at
    FROM convo WHERE role = 'user'
), shown AS (
    SELECT a.id, a.conversation_id, a.role, a.created_at, a.parent_id
    FROM convo a JOIN questions q ON q.id = a.parent_id
    WHERE a.role = 'assistant' AND a.status = 'complete' AND (q.next_at IS NULL OR a.created_at < q.next_at)
    QUALIFY row_number() OVER (PARTITION BY a.parent_id ORDER BY a.created_at DESC, a.id DESC) = 1
)
SELECT id, conversation_id, role, created_at, NULL AS parent_id FROM convo WHERE role IN ('system', 'user')
UNION ALL
SELECT * FROM shown
"""

# every text a row may carry: thread messages, labelled answers, operator corrections
RAW_TEXTS_SQL = """
CREATE OR REPLACE TEMP VIEW raw_texts AS
SELECT m.id AS key, m.role, m.content AS text FROM messages m
WHERE m.id IN (SELECT id FROM thread UNION SELECT message_id FROM labels WHERE label IS NOT NULL)
UNION ALL
SELECT 'review:' || review_id, 'assistant', corrected_answer FROM labels WHERE corrected_answer IS NOT NULL
"""

TEXTS_TABLE_SQL = """
CREATE OR REPLACE TEMP SEQUENCE text_idx START 0 MINVALUE 0;
CREATE OR REPLACE TEMP TABLE texts (
    idx BIGINT, key TEXT, role TEXT, text TEXT, chars BIGINT, defect INTEGER, h UBIGINT
);
"""

# defect is only looked for where the one scan of every text flagged something
INSERT_TEXTS_SQL = f"""
INSERT INTO texts
SELECT nextval('text_idx'), key, role, text, length(text), CASE WHEN flagged THEN {DEFECT_SQL} END,
       hash(role, text)
FROM _scrubbed
"""

# each user message's prompt: the thread up to it, as a running window over the conversation
PROMPTS_SQL = """
CREATE OR REPLACE TEMP TABLE prompts AS
WITH running AS (
    SELECT t.id AS parent_id, t.role, first_value(t.role) OVER w AS first_role,
           list(c.idx) OVER w AS prompt_idx, list(t.id) OVER w AS prompt_ids, list(c.h) OVER w AS hs,
           sum(c.chars) OVER w AS chars, min(c.defect) OVER w AS defect
    FROM thread t JOIN texts c ON c.key = t.id
    WINDOW w AS (PARTITION BY t.conversation_id
                 ORDER BY t.created_at, CASE t.role WHEN 'system' THEN 0 WHEN 'user' THEN 1 ELSE 2 END, t.id
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
), wanted AS (
    SELECT r.*, first_role = 'system' OR s.idx IS NULL AS as_is, s.idx AS s_idx, s.h AS s_h, s.chars AS s_chars
    FROM running r LEFT JOIN (SELECT * FROM texts WHERE key = '{system_key}') s ON true
    WHERE r.role = 'user' AND r.parent_id IN (SELECT parent_id FROM labels WHERE label IS NOT NULL)
)
SELECT parent_id, prompt_ids, defect,
       CASE WHEN as_is THEN prompt_idx ELSE list_prepend(s_idx, prompt_idx) END AS prompt_idx,
       CASE WHEN as_is THEN chars ELSE chars + s_chars END AS chars,
       hash(CASE WHEN as_is THEN hs ELSE list_prepend(s_h, hs) END) AS h
FROM wanted
"""


def add_texts(con: duckdb.DuckDBPyConnection, source: str, phi_library: bool) -> dict[str, int]:
    """Scrub ``source(key, role, text)`` and add it, annotated, to ``texts``."""
    report = scrub_table(con, source, "_scrubbed", library=phi_library, also_flag=DEFECTIVE)
    con.execute(INSERT_TEXTS_SQL)
    con.execute("DROP TABLE _scrubbed")
    return report


def create_prompts(
    con: duckdb.DuckDBPyConnection, phi_library: bool = True, system_prompt: str | None = None
) -> dict[str, Any]:
    """Temp tables ``thread``, ``texts`` and ``prompts`` (parent_id, prompt_idx, prompt_ids,
    chars, defect, h: a hash of the prompt's roles and texts); returns the PHI counts."""
    con.execute(THREAD_SQL)
    con.execute(RAW_TEXTS_SQL)
    con.execute(TEXTS_TABLE_SQL)
    phi = add_texts(con, "raw_texts", phi_library)
    con.execute("DROP VIEW raw_texts")
    if system_prompt is not None:  # the operator's text: not scrubbed
        con.execute(
            "INSERT INTO texts SELECT nextval('text_idx'), ?, 'system', ?::VARCHAR, length(?::VARCHAR), NULL,"
            " hash('system', ?::VARCHAR)",
            [SYSTEM_KEY, system_prompt, system_prompt, system_prompt],
        )
    con.execute(PROMPTS_SQL.format(system_key=SYSTEM_KEY))
    return phi
