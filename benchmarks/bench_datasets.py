"""Benchmark: build the KTO and DPO datasets from a snapshot of 1,000,000 answers.

    .venv/bin/python -m benchmarks.bench_datasets [--answers 1000000] [--threads N] [--export]

The record is synthesized in DuckDB SQL (generate_series, seeded random) into an in-memory
database with the real schema, then written with the snapshot code itself. Multi-turn
conversations with the prompt each answer was served, regenerations (siblings), failed
answers, votes, two judges, operator reviews with corrections, some PHI and some duplicates.
Timed: ``build_datasets`` on that snapshot, and, as a baseline on the same machine in the
same run, a plain DuckDB scan of the same Parquet files (the machine is shared and noisy:
compare the ratio, not the seconds), and the CPU seconds of the process (all DuckDB threads),
which other load disturbs less than wall time.
The synthetic record is seeded, but DuckDB's random() across threads is not: counts vary by a
few rows from run to run. Target: under 30 s for 1M answers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from feedback.store import migration_files
from retrain.datasets import BuildConfig, Candidate, build_datasets, export_dataset
from retrain.datasets.snapshot import SnapshotInfo, copy_tables, new_snapshot_id, write_manifest

SYNTH_SQL = """
SELECT setseed(0.42);
CREATE TEMP TABLE q AS
SELECT i AS q, i // 3 AS conv, i % 3 AS turn,
       TIMESTAMPTZ '2026-01-01 00:00:00+00' + to_seconds((i // 3) * 600 + (i % 3) * 120) AS asked,
       random() AS r
FROM range({questions}) t(i);

INSERT INTO conversations SELECT 'c' || conv, 'user' || (conv % 5000), min(asked) FROM q GROUP BY conv;

INSERT INTO messages (id, conversation_id, role, status, content, created_at)
SELECT 'q' || q, 'c' || conv, 'user', 'complete',
       CASE WHEN r < 0.01 THEN 'What is a normal body temperature?'
            WHEN r < 0.02 THEN 'My name is John Smith, call me at 415-555-' || lpad((q % 10000)::VARCHAR, 4, '0')
                               || '. I have had a cough for ' || (q % 9 + 1) || ' days.'
            WHEN r < 0.022 THEN 'I posted my rash photos as @patient' || q || ', is it eczema?'
            ELSE ['I have had a headache for ', 'My child has had a fever for ', 'My knee hurts since ',
                  'Can I take ibuprofen with my blood pressure pills? It started ',
                  'How much paracetamol is safe? For '][q % 5 + 1]
                 || (q % 13 + 1) || ' days (case ' || q || '). ' || repeat('What should I do about it? ', 1 + q % 4)
       END,
       asked
FROM q;

CREATE TEMP TABLE a AS
SELECT i AS a, CASE WHEN i < {questions} THEN i ELSE (hash(i) % {questions})::BIGINT END AS q, random() AS r
FROM range({answers}) t(i);

INSERT INTO messages (id, conversation_id, parent_id, role, content, status, created_at)
SELECT 'a' || a.a, 'c' || q.conv, 'q' || a.q, 'assistant',
       CASE WHEN q.r < 0.01 THEN 'About 37 degrees Celsius.'
            ELSE ['Rest, drink fluids and ', 'I cannot help with that; ', 'Take it with food and ',
                  'Please see a doctor if ', 'It is usually safe, but '][a.a % 5 + 1]
                 || repeat('monitor the symptoms and seek care if they get worse. ', 2 + a.a % 6)
                 || '(answer ' || a.a || ')'
       END,
       CASE WHEN a.r < 0.02 THEN 'error' ELSE 'complete' END,
       q.asked + to_seconds(5 + (a.a >= {questions})::INT * (10 + a.a % 90))
FROM a JOIN q USING (q);

-- what each question's answers were served: the system prompt, then the conversation as the
-- user saw it (each earlier question and its first answer), then the question
CREATE TEMP TABLE served AS
WITH thread AS (
    SELECT e.q, e.conv, e.turn, 0 AS k, 'user' AS role, m.content FROM q e JOIN messages m ON m.id = 'q' || e.q
    UNION ALL
    SELECT e.q, e.conv, e.turn, 1, 'assistant', m.content FROM q e JOIN messages m ON m.id = 'a' || e.q
)
SELECT q.q, to_json(list_prepend({{'content': 'You are a careful medical assistant for a clinic.', 'role': 'system'}},
                                 list({{'content': t.content, 'role': t.role}} ORDER BY t.turn, t.k))) AS messages
FROM q JOIN thread t ON t.conv = q.conv AND (t.turn < q.turn OR (t.turn = q.turn AND t.k = 0))
GROUP BY q.q;

INSERT INTO prompts (id, messages, reconstructed, created_at)
SELECT sha256(messages) AS id, any_value(messages), false, TIMESTAMPTZ '2026-01-01 00:00:00+00' FROM served GROUP BY id;

UPDATE messages SET prompt_id = sha256(s.messages) FROM served s
WHERE messages.role = 'assistant' AND messages.parent_id = 'q' || s.q;

INSERT INTO feedback (seq, message_id, user_id, rating, created_at)
SELECT a * 2 + k, 'a' || a, 'u' || (a % 997 + k), CASE WHEN random() < 0.7 THEN 'up' ELSE 'down' END,
       TIMESTAMPTZ '2026-02-01 00:00:00+00'
FROM a, range(2) v(k) WHERE r >= 0.02 AND r < CASE k WHEN 0 THEN 0.22 ELSE 0.07 END;

INSERT INTO judgments (id, message_id, judge, judge_version, label, harm_level, unsafe_compliance, over_refusal,
                       created_at)
SELECT 'j' || a || '-' || judge, 'a' || a, judge, 'v1', label, harm,
       CASE WHEN label IS NOT NULL THEN harm >= 2 AND label = 'Accept' END,
       CASE WHEN label IS NOT NULL THEN harm = 0 AND label = 'Refuse' END,
       TIMESTAMPTZ '2026-02-01 00:00:00+00' + to_seconds(a)
FROM (
    SELECT a, judge, (floor(random() * 4))::INT AS harm,
           CASE WHEN s < 0.05 THEN NULL WHEN s < 0.75 THEN 'Accept' WHEN s < 0.92 THEN 'Caution'
                ELSE 'Refuse' END AS label
    FROM (SELECT a, j.judge, random() AS s, r FROM a, (VALUES ('self'), ('external')) j(judge))
    WHERE r < 0.95 AND (judge = 'self' OR r < 0.30)
);

INSERT INTO reviews (id, message_id, operator_id, label, harm_level, verdict, corrected_answer, created_at)
SELECT 'r' || a, 'a' || a, 'op1', 'Accept', 2, CASE WHEN a % 3 = 0 THEN 'desirable' ELSE 'undesirable' END,
       CASE WHEN a % 2 = 0 THEN 'A safer, corrected answer (' || a || '): please talk to your doctor.' END,
       TIMESTAMPTZ '2026-03-01 00:00:00+00'
FROM a WHERE r >= 0.02 AND r < 0.04;
"""


def record_schema(con: duckdb.DuckDBPyConnection) -> None:
    """The record's tables, with their columns and types but without keys, defaults or
    checks (building a million rows' key indexes would dominate the synthesis)."""
    for _, _, sql in migration_files():
        con.execute(sql)
    for table in ("feedback", "judgments", "reviews", "messages", "conversations", "prompts"):
        con.execute(f"CREATE TABLE {table}_bare AS FROM {table} LIMIT 0")
        con.execute(f"DROP TABLE {table}")
        con.execute(f"ALTER TABLE {table}_bare RENAME TO {table}")


def synthesize(answers: int, root: Path) -> SnapshotInfo:
    con = duckdb.connect(":memory:")
    record_schema(con)
    con.execute(SYNTH_SQL.format(answers=answers, questions=int(answers * 0.87)))
    now = datetime.now(timezone.utc)
    folder = root / new_snapshot_id(now)
    folder.mkdir(parents=True)
    counts = copy_tables(con, folder)
    con.close()
    info = SnapshotInfo(folder.name, folder, now.isoformat(), counts, 1)
    write_manifest(info)
    return info


def timed(fn, *args, **kwargs):
    """(result, wall seconds, CPU seconds of this process: all DuckDB threads included)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


async def careful_sampler(prompt, reminder, seed) -> Candidate:
    """Best-of-N without a model: the reminded sample scores 1, the other 0."""
    return Candidate("A careful answer." if reminder else "Sure.", float(reminder), True, reminder)


def baseline(folder: Path, threads: int | None) -> tuple[float, float]:
    """A plain scan of the same Parquet: count and total length of every message."""
    con = duckdb.connect(":memory:")
    if threads:
        con.execute(f"SET threads = {threads}")
    sql = f"SELECT count(*), sum(length(content)) FROM read_parquet('{folder / 'messages.parquet'}')"
    _, wall, cpu = timed(lambda: con.execute(sql).fetchall())
    con.close()
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answers", type=int, default=1_000_000)
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all cores)")
    parser.add_argument("--export", action="store_true", help="also time Parquet and JSONL exports")
    parser.add_argument("--no-library", action="store_true", help="scrub with the regular expressions alone")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        info, wall, _ = timed(synthesize, args.answers, root / "snapshots")
        print(f"synthesized {json.dumps(info.row_counts)} in {wall:.1f} s")

        config = BuildConfig(threads=args.threads, phi_library=not args.no_library, sample_cap=64)
        base_before = baseline(info.path, args.threads)
        build, wall, cpu = timed(build_datasets, info.path, config, sampler=careful_sampler)
        base_after = baseline(info.path, args.threads)
        base_wall, base_cpu = min(base_before[0], base_after[0]), min(base_before[1], base_after[1])

        report = build.report
        print(f"build_datasets: {wall:.2f} s wall, {cpu:.2f} s CPU for {args.answers:,} answers "
              f"({args.answers / wall:,.0f} answers/s wall); "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"  stages, wall s: {json.dumps(report['timings_s'])}")
        print(f"  KTO rows {build.kto.num_rows:,}  DPO pairs {build.dpo.num_rows:,} "
              f"{json.dumps(report['dpo']['by_source'])}")
        print(f"  labels {json.dumps(report['labels']['by_source'])} "
              f"conflicts {json.dumps(report['labels']['conflicts'])}")
        print(f"  KTO dropped {json.dumps(report['kto']['dropped'])}, duplicates {report['kto']['duplicates']:,}")
        print(f"  PHI {json.dumps(report['phi'])}")
        print(f"baseline, a scan of messages.parquet (best of 2): {base_wall:.3f} s wall, {base_cpu:.3f} s CPU")
        print(f"ratio build / baseline: {wall / base_wall:,.0f}x wall, {cpu / max(base_cpu, 1e-9):,.0f}x CPU")
        print(f"peak memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB")
        if args.export:
            for fmt in ("parquet", "jsonl"):
                tables = (("kto", build.kto), ("dpo", build.dpo))
                _, wall, cpu = timed(lambda: [export_dataset(t, root / f"{k}.{fmt}", fmt) for k, t in tables])
                print(f"export {fmt}: {wall:.2f} s wall, {cpu:.2f} s CPU")

if __name__ == "__main__":
    main()
