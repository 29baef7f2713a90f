"""Row hygiene in SQL: drop (and count) unusable rows, then deduplicate.

Rows are handled as skeletons — prompt (``parent_id``), answer ids, text keys, lengths, defects
and content hashes — and only get their text when they are assembled at the end, so these
steps move numbers, not megabytes.

Dropped, first reason that applies:
- ``empty``: a message (prompt or answer) with no visible text;
- ``invalid_text``: text that was mangled on its way in — U+FFFD (what a lenient decoder
  leaves of invalid UTF-8), NUL and other control characters (lone surrogates cannot reach
  DuckDB at all; a sampled answer holding one is dropped before, as ``invalid_utf8``);
- ``too_long``: more than ``max_chars`` characters in the whole row (prompt + answers);
- ``identical_pair`` (DPO): chosen and rejected say the same (equal role-and-text hashes).

Duplicates (same prompt and completion; same prompt, chosen and rejected — compared by the
64-bit hashes of the prompt list and of each answer text) become one row: the one from the
strongest source is kept (operator > judge > thumbs; correction > sibling > sampled; then
undesirable before desirable), and its ``message_ids`` gain the ids of the rows it replaces,
so a deletion request still finds every row its messages went into.
"""

from __future__ import annotations

import duckdb

INVALID_TEXT = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F\x{FFFD}]"
DEFECTIVE = r"^\s*$|" + INVALID_TEXT  # what makes a text worth the DEFECT_SQL look
DEFECTS = {1: "empty", 2: "invalid_text"}  # the smaller code wins when a row has both
DEFECT_SQL = (
    r"CASE WHEN text IS NULL OR NOT regexp_matches(text, '\S') THEN 1"
    f" WHEN regexp_matches(text, '{INVALID_TEXT}') THEN 2 END"
)


def drop_bad_rows(
    con: duckdb.DuckDBPyConnection, source: str, target: str, max_chars: int, extra: tuple[tuple[str, str], ...] = ()
) -> dict[str, int]:
    """``target``: the rows of ``source`` (with ``defect`` and ``chars`` columns) that pass;
    returns how many were dropped, by reason."""
    reasons = (
        *((name, f"defect = {code}") for code, name in DEFECTS.items()),
        ("too_long", f"chars > {int(max_chars)}"),
        *extra,
    )
    case = "CASE " + " ".join(f"WHEN {sql} THEN '{name}'" for name, sql in reasons) + " END"
    counts = dict(con.execute(f"SELECT {case} AS reason, count(*) FROM {source} GROUP BY reason").fetchall())
    con.execute(f"CREATE OR REPLACE TEMP TABLE {target} AS SELECT * FROM {source} WHERE ({case}) IS NULL")
    return {name: counts.get(name, 0) for name, _ in reasons}


def dedup(
    con: duckdb.DuckDBPyConnection, source: str, target: str, keys: list[str], carried: list[str], preference: str
) -> int:
    """``target``: one row per distinct ``keys``, with the ``carried`` columns (and
    ``parent_id``, ``answer_ids``) of the row with the smallest ``preference``; ``merged``
    lists the (parent_id, answer_ids) of every row of a group of several, else NULL.
    Returns the number of rows merged away."""
    columns = ["parent_id", "answer_ids", *carried]
    kept = "{" + ", ".join(f"'{c}': {c}" for c in columns) + "}"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {target} AS
        SELECT kept.*, merged FROM (
            SELECT arg_min({kept}, {preference}) AS kept,
                   CASE WHEN count(*) > 1 THEN list({{'parent_id': parent_id, 'answer_ids': answer_ids}}) END AS merged
            FROM {source} GROUP BY {", ".join(keys)}
        )
        """
    )
    before = con.execute(f"SELECT count(*) FROM {source}").fetchall()[0][0]
    return before - con.execute(f"SELECT count(*) FROM {target}").fetchall()[0][0]


def others_cte(table: str) -> str:
    """CTE ``others``: for each row of a deduplicated ``table`` that merged a group, every
    message id of the group (join it on parent_id and answer_ids, use ``MESSAGE_IDS``)."""
    return f"""others AS (
        SELECT g.parent_id, g.answer_ids,
               list_sort(list_distinct(flatten(list(p.prompt_ids || g.m.answer_ids)))) AS ids
        FROM (SELECT parent_id, answer_ids, unnest(merged) AS m FROM {table} WHERE merged IS NOT NULL) g
        JOIN prompts p ON p.parent_id = g.m.parent_id
        GROUP BY g.parent_id, g.answer_ids
    )"""


# provenance of a row ``k`` with prompt ``p`` and group ``o``: the prompt's ids and the row's
# answer ids, then the ids of the rows it replaced
MESSAGE_IDS = """CASE WHEN o.ids IS NULL THEN p.prompt_ids || k.answer_ids
     ELSE p.prompt_ids || k.answer_ids
          || list_filter(o.ids, lambda i: NOT list_contains(p.prompt_ids || k.answer_ids, i)) END"""
