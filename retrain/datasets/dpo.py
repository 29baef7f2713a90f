"""DPO pairs in TRL's conversational form, from three sources (``source`` column):

- ``correction``: an operator's corrected answer (chosen) vs the original (rejected);
- ``sibling``: answers to the same user message (regenerations) whose values (``labels.value``:
  operator verdict, else the judge's confident CARES score, else thumbs) differ by at least
  the margin — every better one against every worse one;
- ``sampled``: on-policy best-of-N (``best_of_n.py``) for a prompt with neither: N new
  answers from the current model, judged; the best against the worst when their scores
  differ by at least the margin and both judgments are confident.

``message_ids``: the prompt's ids, then the chosen answer's id (siblings only), then the
rejected answer's id (for ``sampled``: the answer whose prompt was sampled).
"""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from retrain.datasets.assemble import TextStore, assemble
from retrain.datasets.hygiene import MESSAGE_IDS, dedup, drop_bad_rows, others_cte
from retrain.datasets.prompts import add_texts
from retrain.datasets.schema import DPO_SOURCES, validate_table

# pair skeletons: the prompt (parent_id), the answers the pair is about, the keys of its texts
PAIRS_SQL = """
CREATE OR REPLACE TEMP TABLE dpo_pairs AS
SELECT parent_id, [message_id] AS answer_ids, 'correction' AS source,
       'review:' || review_id AS chosen_key, message_id AS rejected_key
FROM labels WHERE corrected_answer IS NOT NULL
UNION ALL
SELECT g.parent_id, [g.message_id, b.message_id], 'sibling', g.message_id, b.message_id
FROM labels g JOIN labels b ON b.parent_id = g.parent_id AND g.value - b.value >= {margin}
"""

SAMPLED_PAIRS_SQL = """
INSERT INTO dpo_pairs
SELECT l.parent_id, [l.message_id], 'sampled', 'best:' || l.message_id, 'worst:' || l.message_id
FROM labels l SEMI JOIN raw_samples s ON s.key = 'best:' || l.message_id
"""

DPO_RAW_SQL = """
CREATE OR REPLACE TEMP TABLE dpo_raw AS
SELECT d.*, c.idx AS chosen_idx, r.idx AS rejected_idx,
       p.chars + c.chars + r.chars AS chars, least(p.defect, c.defect, r.defect) AS defect,
       c.h = r.h AS identical, p.h AS prompt_h, c.h AS chosen_h, r.h AS rejected_h
FROM dpo_pairs d JOIN prompts p USING (parent_id)
JOIN texts c ON c.key = d.chosen_key JOIN texts r ON r.key = d.rejected_key
"""

DPO_PREFERENCE = "(CASE source WHEN 'correction' THEN 0 WHEN 'sibling' THEN 1 ELSE 2 END, answer_ids)"

DPO_ROWS_SQL = """
WITH {others}
SELECT p.prompt_idx, [k.chosen_idx] AS chosen_idx, [k.rejected_idx] AS rejected_idx, k.source,
       {message_ids} AS message_ids
FROM dpo_kept k JOIN prompts p USING (parent_id)
LEFT JOIN others o ON o.parent_id = k.parent_id AND o.answer_ids = k.answer_ids
ORDER BY hash(k.answer_ids, k.source, {seed}), k.answer_ids, k.source
"""


def create_pairs(con: duckdb.DuckDBPyConnection, margin: float) -> None:
    """Temp table ``dpo_pairs`` with the correction and sibling pair skeletons."""
    con.execute(PAIRS_SQL.format(margin=float(margin)))


def add_sampled_pairs(
    con: duckdb.DuckDBPyConnection, pairs: list[tuple[str, str, str]], phi_library: bool
) -> dict[str, int]:
    """Scrub the sampled (message id, chosen, rejected) answers into ``texts`` and add their
    pairs to ``dpo_pairs``."""
    keys = [f"{side}:{message_id}" for message_id, _, _ in pairs for side in ("best", "worst")]
    texts = [text for _, chosen, rejected in pairs for text in (chosen, rejected)]
    table = pa.table({
        "key": pa.array(keys, pa.string()),
        "role": pa.array(["assistant"] * len(keys), pa.string()),
        "text": pa.array(texts, pa.string()),
    })
    con.register("_samples", table)
    con.execute("CREATE OR REPLACE TEMP TABLE raw_samples AS SELECT * FROM _samples")
    con.unregister("_samples")
    phi = add_texts(con, "raw_samples", phi_library)
    con.execute(SAMPLED_PAIRS_SQL)
    con.execute("DROP TABLE raw_samples")
    return phi


def build_dpo(
    con: duckdb.DuckDBPyConnection, store: TextStore, max_chars: int, seed: int
) -> tuple[pa.Table, dict[str, Any]]:
    """The DPO table from ``dpo_pairs`` (validated, shuffled by ``seed``)."""
    con.execute(DPO_RAW_SQL)
    candidates = dict(con.execute("SELECT source, count(*) FROM dpo_raw GROUP BY ALL").fetchall())
    dropped = drop_bad_rows(con, "dpo_raw", "dpo_ok", max_chars, (("identical_pair", "identical"),))
    keys = ["prompt_h", "chosen_h", "rejected_h"]
    duplicates = dedup(con, "dpo_ok", "dpo_kept", keys, ["source", "chosen_idx", "rejected_idx"], DPO_PREFERENCE)
    by_source = dict(con.execute("SELECT source, count(*) FROM dpo_kept GROUP BY ALL").fetchall())
    sql = DPO_ROWS_SQL.format(others=others_cte("dpo_kept"), message_ids=MESSAGE_IDS, seed=int(seed))
    skeleton = con.sql(sql).to_arrow_table()
    columns = {"prompt_idx": "prompt", "chosen_idx": "chosen", "rejected_idx": "rejected"}
    table = validate_table(assemble(store, skeleton, columns), "dpo")
    report = {
        "candidates": {s: candidates.get(s, 0) for s in DPO_SOURCES},
        "dropped": dropped,
        "duplicates": duplicates,
        "rows": len(table),
        "by_source": {s: by_source.get(s, 0) for s in DPO_SOURCES},
    }
    for name in ("dpo_pairs", "dpo_raw", "dpo_ok", "dpo_kept"):
        con.execute(f"DROP TABLE {name}")
    return table, report
