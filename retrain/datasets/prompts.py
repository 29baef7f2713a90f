"""Prompts as served, and the scrubbed texts every row is made of.

Every answer points at the prompt it was served (``messages.prompt_id`` → the snapshot's
``served_prompts``): the exact messages the engine received — system prompt, safety reminder
when it fired, history as the client sent it. A row's prompt is that record, never rebuilt from
the conversation (answers written before the record existed have one rebuilt by migration 005,
marked ``reconstructed``). Rows are built per user message (``parent_id``), so that siblings —
regenerations, answering the same question — share one prompt and a DPO pair has one: the prompt
served with the earliest answer in scope. An answer without a prompt gives no row.

Texts are scrubbed once each, into ``texts`` (idx, key, role, text, chars, defect, h); rows
refer to them by ``idx`` until they are assembled (``assemble.py``). A prompt's message is keyed
by the md5 of its role and text, so a system prompt or an earlier turn that many prompts repeat
is scrubbed once.
"""

from __future__ import annotations

import duckdb

from retrain.datasets.hygiene import DEFECT_SQL, DEFECTIVE
from retrain.datasets.phi import scrub_table

# each user message in scope (labelled or a best-of-N candidate) and the prompt of its earliest answer
SERVED_SQL = """
CREATE OR REPLACE TEMP TABLE served AS
SELECT a.parent_id, a.prompt_id FROM messages a SEMI JOIN labels l ON l.message_id = a.id
WHERE a.prompt_id IS NOT NULL
QUALIFY row_number() OVER (PARTITION BY a.parent_id ORDER BY a.created_at, a.id) = 1
"""

# the messages of those prompts, one row each, with their position and text key
PROMPT_MESSAGES_SQL = """
CREATE OR REPLACE TEMP TABLE prompt_messages AS
SELECT prompt_id, pos, 'text:' || md5(to_json(message)) AS key, message.role, message.content AS text
FROM (
    SELECT id AS prompt_id, unnest(range(len(messages))) AS pos, unnest(messages) AS message
    FROM (SELECT id, from_json(messages, '[{"role": "VARCHAR", "content": "VARCHAR"}]') AS messages
          FROM served_prompts SEMI JOIN served ON served.prompt_id = served_prompts.id)
)
"""

# every text a row may carry: prompt messages (each distinct one once), labelled answers,
# operator corrections
RAW_TEXTS_SQL = """
CREATE OR REPLACE TEMP VIEW raw_texts AS
SELECT key, any_value(role) AS role, any_value(text) AS text FROM prompt_messages GROUP BY key
UNION ALL
SELECT m.id, m.role, m.content FROM messages m
WHERE m.id IN (SELECT message_id FROM labels WHERE label IS NOT NULL)
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

# each user message's prompt as text positions; provenance: the user message itself (a
# deletion removes whole conversations, so it finds every row its prompt went into)
PROMPTS_SQL = """
CREATE OR REPLACE TEMP TABLE prompts AS
SELECT s.parent_id, [s.parent_id] AS prompt_ids, list(t.idx ORDER BY pm.pos) AS prompt_idx,
       sum(t.chars) AS chars, min(t.defect) AS defect, hash(list(t.h ORDER BY pm.pos)) AS h
FROM served s JOIN prompt_messages pm USING (prompt_id) JOIN texts t ON t.key = pm.key
GROUP BY s.parent_id
"""


def add_texts(con: duckdb.DuckDBPyConnection, source: str, phi_library: bool) -> dict[str, int]:
    """Scrub ``source(key, role, text)`` and add it, annotated, to ``texts``."""
    report = scrub_table(con, source, "_scrubbed", library=phi_library, also_flag=DEFECTIVE)
    con.execute(INSERT_TEXTS_SQL)
    con.execute("DROP TABLE _scrubbed")
    return report


def create_prompts(con: duckdb.DuckDBPyConnection, phi_library: bool = True) -> dict[str, int]:
    """Temp tables ``texts`` and ``prompts`` (parent_id, prompt_idx, prompt_ids, chars, defect,
    h: a hash of the prompt's roles and texts); returns the PHI counts."""
    con.execute(SERVED_SQL)
    con.execute(PROMPT_MESSAGES_SQL)
    con.execute(RAW_TEXTS_SQL)
    con.execute(TEXTS_TABLE_SQL)
    phi = add_texts(con, "raw_texts", phi_library)
    con.execute("DROP VIEW raw_texts")
    con.execute(PROMPTS_SQL)
    return phi
