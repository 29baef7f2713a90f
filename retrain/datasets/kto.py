"""KTO rows: one per labelled answer, in TRL's conversational form, plus provenance (and the
anchors of anchors.py, if the build asks for them).

``{"prompt": [messages], "completion": [{"role": "assistant", ...}], "label": bool,
"message_ids": [prompt ids..., answer id, (ids of merged duplicates)]}``
"""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from retrain.datasets.anchors import choose_anchors
from retrain.datasets.assemble import TextStore, assemble
from retrain.datasets.hygiene import MESSAGE_IDS, dedup, drop_bad_rows, others_cte
from retrain.datasets.schema import validate_table

# TRL's KTO guidance: desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
# should lie in [1, 4/3]
RATIO_LOW, RATIO_HIGH = 1.0, 4 / 3

KTO_RAW_SQL = """
CREATE OR REPLACE TEMP TABLE kto_raw AS
SELECT l.parent_id, [l.message_id] AS answer_ids, l.label, c.idx AS completion_idx,
       CASE l.source WHEN 'operator' THEN 0 WHEN 'judge' THEN 1 ELSE 2 END AS source_rank,
       p.chars + c.chars AS chars, least(p.defect, c.defect) AS defect, p.h AS prompt_h, c.h AS completion_h
FROM labels l JOIN prompts p USING (parent_id) JOIN texts c ON c.key = l.message_id
WHERE l.label IS NOT NULL
"""

# strongest source first, then undesirable before desirable, then a stable tie-break
KTO_PREFERENCE = "(source_rank, label::INTEGER, answer_ids)"

# the record's rows and the anchors (anchors.py), shuffled together
KTO_ROWS_SQL = """
WITH {others}
SELECT prompt_idx, completion_idx, label, message_ids FROM (
    SELECT p.prompt_idx, [k.completion_idx] AS completion_idx, k.label, {message_ids} AS message_ids, k.answer_ids
    FROM kto_kept k JOIN prompts p USING (parent_id)
    LEFT JOIN others o ON o.parent_id = k.parent_id AND o.answer_ids = k.answer_ids
    UNION ALL
    SELECT prompt_idx, [completion_idx], label, answer_ids, answer_ids FROM kto_anchors
)
ORDER BY hash(answer_ids, {seed}), answer_ids
"""


def kto_weights(desirable: int, undesirable: int) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight) that bring the weighted ratio into [1, 4/3].

    Both stay 1.0 when the raw ratio n_D / n_U is already in range (or a class is empty: then
    there is nothing to balance). Otherwise only the minority class is up-weighted, by just
    enough to reach the nearest bound: fewer desirable rows → desirable_weight = n_U / n_D
    (ratio 1); more than 4/3 as many desirable rows → undesirable_weight = n_D / (4/3 · n_U)
    (ratio 4/3).
    """
    if not desirable or not undesirable:
        return 1.0, 1.0
    ratio = desirable / undesirable
    if ratio < RATIO_LOW:
        return RATIO_LOW / ratio, 1.0
    if ratio > RATIO_HIGH:
        return 1.0, ratio / RATIO_HIGH
    return 1.0, 1.0


def build_kto(
    con: duckdb.DuckDBPyConnection, store: TextStore, max_chars: int, seed: int, anchor_ratio: float
) -> tuple[pa.Table, dict[str, Any]]:
    """The KTO table (validated, shuffled by ``seed``: TRL's KTO trainer does not shuffle): the
    record's rows plus at most ``anchor_ratio`` rows of ``anchor_pool`` per record row. The class
    weights count every row trained on, anchors included."""
    con.execute(KTO_RAW_SQL)
    candidates = con.execute("SELECT count(*) FROM kto_raw").fetchall()[0][0]
    dropped = drop_bad_rows(con, "kto_raw", "kto_ok", max_chars)
    keys, carried = ["prompt_h", "completion_h"], ["label", "completion_idx"]
    duplicates = dedup(con, "kto_ok", "kto_kept", keys, carried, KTO_PREFERENCE)
    record_rows = con.execute("SELECT count(*) FROM kto_kept").fetchall()[0][0]
    anchors = choose_anchors(con, anchor_ratio, record_rows, max_chars, seed)
    desirable, undesirable = con.execute(
        "SELECT count(*) FILTER (label), count(*) FILTER (NOT label)"
        " FROM (SELECT label FROM kto_kept UNION ALL SELECT label FROM kto_anchors)"
    ).fetchall()[0]
    sql = KTO_ROWS_SQL.format(others=others_cte("kto_kept"), message_ids=MESSAGE_IDS, seed=int(seed))
    skeleton = con.sql(sql).to_arrow_table()
    table = validate_table(assemble(store, skeleton, {"prompt_idx": "prompt", "completion_idx": "completion"}), "kto")
    weights = kto_weights(desirable, undesirable)
    report = {
        "candidates": candidates,
        "dropped": dropped,
        "duplicates": duplicates,
        "rows": len(table),
        "desirable": desirable,
        "undesirable": undesirable,
        "desirable_weight": weights[0],
        "undesirable_weight": weights[1],
        "weighted_ratio": (weights[0] * desirable / (weights[1] * undesirable)) if undesirable else None,
        "anchors": anchors,
    }
    for name in ("kto_raw", "kto_ok", "kto_kept", "kto_anchors"):
        con.execute(f"DROP TABLE {name}")
    return table, report
