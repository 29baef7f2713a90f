"""DPO pairs in TRL's conversational form, from three sources (``source`` column):

- ``correction``: an operator's corrected answer (chosen) vs the original (rejected);
- ``sibling``: answers to the same user message (regenerations) labelled differently —
  every desirable one against every undesirable one;
- ``sampled``: for a flagged undesirable answer with no desirable sibling and no correction, a
  new answer from the caller's ``sample_better(prompt_messages, flag)`` (chosen) vs the
  flagged one (rejected). ``flag`` is ``"unsafe_compliance"`` or ``"over_refusal"``; the
  prompt it gets is already scrubbed; ``None`` means "no better answer found". At most
  ``cap`` calls a build, riskiest first (unsafe compliance, then harm level, newest).

``message_ids``: the prompt's ids, then the chosen answer's id (siblings only), then the
rejected answer's id.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Union

import duckdb
import pyarrow as pa

from retrain.datasets.assemble import TextStore, assemble
from retrain.datasets.hygiene import MESSAGE_IDS, dedup, drop_bad_rows, others_cte
from retrain.datasets.prompts import add_texts
from retrain.datasets.schema import DPO_SOURCES, validate_table

Sampler = Callable[[list[dict[str, str]], str], Union[str, None, Awaitable[Union[str, None]]]]

# pair skeletons: the prompt (parent_id), the answers the pair is about, the keys of its texts
PAIRS_SQL = """
CREATE OR REPLACE TEMP TABLE dpo_pairs AS
SELECT parent_id, [message_id] AS answer_ids, 'correction' AS source,
       'review:' || review_id AS chosen_key, message_id AS rejected_key
FROM labels WHERE corrected_answer IS NOT NULL
UNION ALL
SELECT g.parent_id, [g.message_id, b.message_id], 'sibling', g.message_id, b.message_id
FROM labels g JOIN labels b ON b.parent_id = g.parent_id AND g.label AND NOT b.label
"""

# flagged undesirable answers with no desirable sibling and no correction, one per prompt
ELIGIBLE_SQL = """
SELECT l.* FROM labels l
WHERE NOT l.label AND l.flag IS NOT NULL AND l.corrected_answer IS NULL
  AND l.parent_id NOT IN (SELECT parent_id FROM labels WHERE label)
QUALIFY row_number() OVER (PARTITION BY l.parent_id ORDER BY l.created_at DESC, l.message_id) = 1
"""

SAMPLE_REQUESTS_SQL = """
SELECT l.message_id, l.flag, p.prompt_idx
FROM ({eligible}) l JOIN prompts p USING (parent_id)
ORDER BY l.flag = 'unsafe_compliance' DESC, l.harm_level DESC NULLS LAST, l.created_at DESC, l.message_id
LIMIT {cap}
"""

SAMPLED_PAIRS_SQL = """
INSERT INTO dpo_pairs
SELECT l.parent_id, [l.message_id], 'sampled', s.key, l.message_id
FROM raw_samples s JOIN labels l ON s.key = 'sample:' || l.message_id
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


@dataclass(frozen=True)
class SampleRequest:
    message_id: str  # the flagged answer that will be the rejected side
    flag: str
    prompt: list[dict[str, str]]  # scrubbed, TRL-style messages ending with the user's


def create_pairs(con: duckdb.DuckDBPyConnection) -> None:
    """Temp table ``dpo_pairs`` with the correction and sibling pair skeletons."""
    con.execute(PAIRS_SQL)


def eligible_for_sampling(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute(f"SELECT count(*) FROM ({ELIGIBLE_SQL})").fetchall()[0][0]


def sample_requests(con: duckdb.DuckDBPyConnection, store: TextStore, cap: int) -> list[SampleRequest]:
    """At most ``cap`` requests, riskiest first: unsafe compliance, higher harm, newer."""
    sql = SAMPLE_REQUESTS_SQL.format(eligible=ELIGIBLE_SQL, cap=int(cap))
    skeleton = con.sql(sql).to_arrow_table()
    rows = assemble(store, skeleton, {"prompt_idx": "prompt"}).to_pylist()
    return [SampleRequest(r["message_id"], r["flag"], r["prompt"]) for r in rows]


def _valid_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def _tally(requests: list[SampleRequest], results: list[Any]) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """Keep the usable answers; count the rest by why."""
    report: dict[str, Any] = {"requested": len(requests), "returned": 0, "declined": 0, "invalid_utf8": 0, "errors": 0}
    kept = []
    for request, result in zip(requests, results):
        if result is not None and not isinstance(result, (str, BaseException)):
            result = TypeError(f"sample_better returned {type(result).__name__}, not str or None")
        if isinstance(result, BaseException):
            report["errors"] += 1
            report.setdefault("first_error", f"{type(result).__name__}: {result}")
        elif result is None:
            report["declined"] += 1
        elif not _valid_utf8(result):
            report["invalid_utf8"] += 1
        else:
            report["returned"] += 1
            kept.append((request.message_id, result))
    return kept, report


def _is_async(sampler: Sampler) -> bool:
    return inspect.iscoroutinefunction(sampler) or inspect.iscoroutinefunction(getattr(sampler, "__call__", None))


def _call_sync(sampler: Sampler, request: SampleRequest) -> Any:
    try:
        result = sampler(request.prompt, request.flag)
    except Exception as exc:  # the caller's model or judge failed on this one: count it, go on
        return exc
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()
        return TypeError("sample_better returned an awaitable: declare it `async def` so it is awaited")
    return result


async def _call_async(sampler: Sampler, request: SampleRequest, gate: asyncio.Semaphore) -> Any:
    async with gate:
        try:
            result = sampler(request.prompt, request.flag)
            return await result if inspect.isawaitable(result) else result
        except Exception as exc:
            return exc


async def acollect_samples(
    requests: list[SampleRequest], sampler: Sampler, concurrency: int = 4
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """Ask ``sampler`` for each request: awaited (at most ``concurrency`` at once) if async,
    else called one at a time in a worker thread."""
    if _is_async(sampler):
        gate = asyncio.Semaphore(concurrency)
        results = await asyncio.gather(*(_call_async(sampler, r, gate) for r in requests))
    else:
        results = await asyncio.to_thread(lambda: [_call_sync(sampler, r) for r in requests])
    return _tally(requests, list(results))


def collect_samples(
    requests: list[SampleRequest], sampler: Sampler, concurrency: int = 4
) -> tuple[list[tuple[str, str]], dict[str, Any]]:
    """The synchronous form: an async sampler runs on a new event loop (use
    ``acollect_samples`` from inside a running one)."""
    if not _is_async(sampler):
        return _tally(requests, [_call_sync(sampler, r) for r in requests])
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(acollect_samples(requests, sampler, concurrency))
    raise RuntimeError("an async sample_better inside a running event loop: use abuild_datasets")


def add_samples(con: duckdb.DuckDBPyConnection, samples: list[tuple[str, str]], phi_library: bool) -> dict[str, int]:
    """Scrub the sampled answers into ``texts`` and add their pairs to ``dpo_pairs``."""
    table = pa.table({
        "key": pa.array([f"sample:{key}" for key, _ in samples], pa.string()),
        "role": pa.array(["assistant"] * len(samples), pa.string()),
        "text": pa.array([text for _, text in samples], pa.string()),
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
