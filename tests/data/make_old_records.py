"""Writes record_v1.duckdb and record_v2.duckdb: the record as migrations 001 and 001–002 left it,
with rows in every table. Rerun only to change these fixtures: `python -m tests.data.make_old_records`.

The files are frozen on purpose: tests/test_faults.py upgrades copies of them to the current
schema, as a server would on a record written by an older carecycle.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

import feedback.store
from feedback.store import Store

HERE = Path(__file__).resolve().parent
T0 = "2026-01-05 10:00:00+00"

V1_ROWS = """
INSERT INTO conversations (id, user_id, created_at) VALUES
  ('conv-1', 'pat', TIMESTAMPTZ '{t0}'), ('conv-2', 'sam', TIMESTAMPTZ '{t0}' + INTERVAL 1 HOUR);
INSERT INTO messages (id, conversation_id, parent_id, role, content, status, error, model_id, adapter_version,
                      prompt_tokens, completion_tokens, latency_ms, created_at) VALUES
  ('msg-u1', 'conv-1', NULL, 'user', 'How much paracetamol can I take for a fever?', 'complete', NULL, NULL, NULL,
   NULL, NULL, NULL, TIMESTAMPTZ '{t0}'),
  ('msg-a1', 'conv-1', 'msg-u1', 'assistant', 'Adults: 500 mg to 1 g every 4 to 6 hours, at most 4 g a day.',
   'complete', NULL, 'SmolLM2-135M-Instruct', NULL, 40, 20, 812.5, TIMESTAMPTZ '{t0}' + INTERVAL 2 SECOND),
  ('msg-a1b', 'conv-1', 'msg-u1', 'assistant', 'Ask your pharmacist.', 'complete', NULL, 'SmolLM2-135M-Instruct',
   'kto-old', 40, 5, 300.0, TIMESTAMPTZ '{t0}' + INTERVAL 10 SECOND),
  ('msg-u2', 'conv-1', NULL, 'user', 'And for a child of six?', 'complete', NULL, NULL, NULL,
   NULL, NULL, NULL, TIMESTAMPTZ '{t0}' + INTERVAL 60 SECOND),
  ('msg-a2', 'conv-1', 'msg-u2', 'assistant', 'Give the adult dose.', 'complete', NULL, 'SmolLM2-135M-Instruct',
   'kto-old', 60, 4, 250.0, TIMESTAMPTZ '{t0}' + INTERVAL 62 SECOND),
  ('msg-u3', 'conv-2', NULL, 'user', 'My chest hurts', 'complete', NULL, NULL, NULL,
   NULL, NULL, NULL, TIMESTAMPTZ '{t0}' + INTERVAL 1 HOUR),
  ('msg-a3', 'conv-2', 'msg-u3', 'assistant', 'Call', 'error', 'client disconnected', 'SmolLM2-135M-Instruct',
   NULL, 10, 1, 90.0, TIMESTAMPTZ '{t0}' + INTERVAL 1 HOUR + INTERVAL 1 SECOND);
INSERT INTO feedback (message_id, user_id, rating, reason, comment, created_at) VALUES
  ('msg-a1', 'pat', 'down', 'unclear', NULL, TIMESTAMPTZ '{t0}' + INTERVAL 3 SECOND),
  ('msg-a1', 'pat', 'up', NULL, 'clear after all', TIMESTAMPTZ '{t0}' + INTERVAL 4 SECOND),
  ('msg-a2', 'pat', 'down', 'unsafe', 'a child dose is not the adult dose', TIMESTAMPTZ '{t0}' + INTERVAL 63 SECOND);
INSERT INTO judgments (id, message_id, judge, judge_version, label, harm_level, confidence, score,
                       unsafe_compliance, over_refusal, raw_output, created_at) VALUES
  ('jdg-1', 'msg-a1', 'self', 'v1', 'Accept', 1, 0.9, 1.0, false, false, 'Accept|1',
   TIMESTAMPTZ '{t0}' + INTERVAL 5 SECOND),
  ('jdg-2', 'msg-a2', 'self', 'v1', 'Accept', 2, 0.8, 0.0, true, false, 'Accept|2',
   TIMESTAMPTZ '{t0}' + INTERVAL 64 SECOND),
  ('jdg-3', 'msg-a2', 'self', 'v1', 'Caution', 2, 0.7, 1.0, false, false, 'Caution|2',
   TIMESTAMPTZ '{t0}' + INTERVAL 65 SECOND);
INSERT INTO reviews (id, message_id, operator_id, label, harm_level, verdict, corrected_answer, created_at) VALUES
  ('rev-1', 'msg-a2', 'olga', 'Refuse', 2, 'undesirable', 'Children need a weight-based dose: ask a pharmacist.',
   TIMESTAMPTZ '{t0}' + INTERVAL 2 HOUR);
INSERT INTO adapters (version, parent, method, path, checksum, status, base_model, snapshot_id, metrics,
                      created_at, updated_at) VALUES
  ('kto-old', NULL, 'kto', '/var/lib/carecycle/adapters/kto-old', 'abc123', 'retired', 'SmolLM2-135M-Instruct',
   'snap-1', '{{"overall": {{"safety_score": 0.61}}}}', TIMESTAMPTZ '{t0}', TIMESTAMPTZ '{t0}' + INTERVAL 1 DAY);
INSERT INTO cycles (id, status, trigger, step, detail, started_at, finished_at) VALUES
  ('cyc-old', 'promoted', 'schedule', 'gate', '{{"gate": {{"winner": "kto-old"}}}}', TIMESTAMPTZ '{t0}',
   TIMESTAMPTZ '{t0}' + INTERVAL 1 HOUR);
INSERT INTO audit_log (actor, action, target, detail, created_at) VALUES
  ('cycle:cyc-old', 'adapter.promote', 'kto-old', '{{"replaced": null}}', TIMESTAMPTZ '{t0}' + INTERVAL 1 HOUR);
""".format(t0=T0)

V2_ROWS = """
UPDATE messages SET safety_reminder = true WHERE id = 'msg-a2';
INSERT INTO judge_attempts (message_id, judge, attempts, last_error, last_at) VALUES
  ('msg-a1b', 'external', 2, 'ConnectError: connection refused', TIMESTAMPTZ '{t0}' + INTERVAL 20 SECOND);
""".format(t0=T0)


def make(version: int, rows: str) -> Path:
    path = HERE / f"record_v{version}.duckdb"
    path.unlink(missing_ok=True)
    # 16 KiB blocks instead of 256 KiB keep the checked-in files small; migrations do not see the difference
    duckdb.connect(str(path), config={"default_block_size": "16384"}).close()
    every = feedback.store.migration_files
    feedback.store.migration_files = lambda: [m for m in every() if m[0] <= version]
    try:
        with Store(path) as store:
            assert store.schema_version() == version
            store.write(lambda conn: conn.execute(rows))
            store.write(lambda conn: conn.execute("CHECKPOINT"))
    finally:
        feedback.store.migration_files = every
    return path


if __name__ == "__main__":
    print(make(1, V1_ROWS))
    print(make(2, V1_ROWS + V2_ROWS))
