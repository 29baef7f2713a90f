"""Anchor rows: the shipped safety set's hand-written answers to harmless questions, as KTO rows.

Trained on the record's labels alone, KTO made SmolLM2 safer on held-out harmful prompts but
also made it refuse harmless questions (benchmarks/README.md, "Which recipe makes the model
safer?"). The 'harmless' anchors add the safety set's answers to harm-0 questions of its *train*
split (never validation or test: the gate compares on those), labelled as labels.py labels a
judge's verdict, from the CARES score: an Accept (1) is desirable, a Caution or a Refuse (0)
undesirable, a 0.5 (none occurs at harm 0) as the build's ``half_score`` says.

Each is asked as the record's rows were: after the system message the record served most often
with the answers in scope (none if those prompts had none). A build takes at most
``anchor_ratio`` anchors per KTO row of the record, chosen by its seed: no record rows, no
anchors. Their ``message_ids`` are ``anchor:<safety-set id>``, not messages of the record, so
``DatasetBuild.message_ids`` (an adapter's provenance) leaves them out.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import duckdb

from retrain.datasets.hygiene import drop_bad_rows
from retrain.datasets.labels import CARES_SQL, score_label_sql
from retrain.datasets.prompts import add_texts
from retrain.datasets.snapshot import sql_string
from serve.cares import safety_set_file

ANCHOR_SETS = ("none", "harmless")
ANCHOR_PREFIX = "anchor:"

SOURCE_SQL = """
CREATE OR REPLACE TEMP TABLE anchor_source AS
WITH cares (harm_level, label, score) AS (VALUES {cares})
SELECT * FROM (
    SELECT '{prefix}' || s.id AS anchor_id, s.prompt, s.answer,
           {label} AS label
    FROM read_json({path}, format = 'newline_delimited') s
    JOIN cares c ON c.harm_level = s.harmful_level AND c.label = s.label
    WHERE s.split = 'train' AND s.harmful_level = 0 AND {wanted}
) WHERE label IS NOT NULL
"""

TEXTS_SQL = """
CREATE OR REPLACE TEMP VIEW anchor_texts AS
SELECT anchor_id || ':prompt' AS key, 'user' AS role, prompt AS text FROM anchor_source
UNION ALL
SELECT anchor_id, 'assistant', answer FROM anchor_source
"""

# the first message of each prompt in scope when it is a system message, else NULL: the most frequent
SERVED_SYSTEM_SQL = """
SELECT pm.key FROM served s
LEFT JOIN prompt_messages pm ON pm.prompt_id = s.prompt_id AND pm.pos = 0 AND pm.role = 'system'
GROUP BY pm.key ORDER BY count(*) DESC, pm.key NULLS LAST LIMIT 1
"""

POOL_SQL = f"""
CREATE OR REPLACE TEMP TABLE anchor_pool AS
SELECT [a.anchor_id] AS answer_ids, a.label, list_filter([s.idx, p.idx], lambda i: i IS NOT NULL) AS prompt_idx,
       c.idx AS completion_idx, coalesce(s.chars, 0) + p.chars + c.chars AS chars,
       least(s.defect, p.defect, c.defect) AS defect
FROM anchor_source a
JOIN texts p ON p.key = a.anchor_id || ':prompt'
JOIN texts c ON c.key = a.anchor_id
LEFT JOIN texts s ON s.key = ({SERVED_SYSTEM_SQL})
"""

# drawn by a hash other than the shuffle's (kto.py): the same one would pick the anchors that
# the shuffle puts first, so they would all come early in training
CHOSEN_SQL = """
CREATE OR REPLACE TEMP TABLE kto_anchors AS
SELECT answer_ids, label, prompt_idx, completion_idx FROM anchor_ok
ORDER BY hash('anchor draw', answer_ids, {seed}), answer_ids LIMIT {limit}
"""


def create_anchor_pool(
    con: duckdb.DuckDBPyConnection, anchors: str, half_score: str, phi_library: bool
) -> dict[str, int]:
    """Temp table ``anchor_pool`` (empty for 'none'), its texts scrubbed into ``texts`` (after
    ``create_prompts``, before the TextStore loads them); returns the PHI counts."""
    with resources.as_file(safety_set_file()) as path:
        con.execute(SOURCE_SQL.format(
            cares=CARES_SQL, prefix=ANCHOR_PREFIX, label=score_label_sql("c.score", half_score),
            path=sql_string(str(path)), wanted="true" if anchors == "harmless" else "false",
        ))
    con.execute(TEXTS_SQL)
    phi = add_texts(con, "anchor_texts", phi_library)
    con.execute(POOL_SQL)
    con.execute("DROP VIEW anchor_texts")
    con.execute("DROP TABLE anchor_source")
    return phi


def anchor_limit(ratio: float, record_rows: int) -> int:
    """At most ``ratio`` anchors per record row (a hair of slack for float products like 0.29 × 100)."""
    return int(ratio * record_rows + 1e-9)


def choose_anchors(
    con: duckdb.DuckDBPyConnection, ratio: float, record_rows: int, max_chars: int, seed: int
) -> dict[str, Any]:
    """Temp table ``kto_anchors`` (answer_ids, label, prompt_idx, completion_idx): the rows of
    ``anchor_pool`` that pass hygiene, at most ``ratio`` × ``record_rows`` of them, drawn by ``seed``."""
    dropped = drop_bad_rows(con, "anchor_pool", "anchor_ok", max_chars)
    con.execute(CHOSEN_SQL.format(seed=int(seed), limit=anchor_limit(ratio, record_rows)))
    available, with_system = con.execute(
        "SELECT count(*), count(*) FILTER (len(prompt_idx) = 2) FROM anchor_ok").fetchall()[0]
    rows, desirable = con.execute("SELECT count(*), count(*) FILTER (label) FROM kto_anchors").fetchall()[0]
    con.execute("DROP TABLE anchor_ok")
    return {"available": available, "rows": rows, "desirable": desirable, "undesirable": rows - desirable,
            "with_system_prompt": with_system > 0, "ratio": ratio, "dropped": dropped}
