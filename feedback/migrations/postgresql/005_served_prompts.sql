-- The served-prompt record: every answer points at the exact messages the engine received
-- (system prompt, safety reminder, history), stored once per distinct prompt.
-- ../005_served_prompts.sql also rebuilds the prompts of answers written before it; no
-- PostgreSQL record predates this migration (a record arrives here through `carecycle db copy`,
-- with its prompts), so there is nothing to rebuild.

CREATE TABLE prompts (
    -- sha256 (hex) of the canonical JSON of ``messages`` (keys sorted, no spaces, UTF-8); a
    -- prompt rebuilt on DuckDB starts with 'reconstructed:', so it never merges with a served one
    id             TEXT PRIMARY KEY,
    messages       JSON NOT NULL,      -- [{"content": ..., "role": ...}, ...], in order
    reconstructed  BOOLEAN NOT NULL DEFAULT false,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

-- NULL only on a user or system message. No foreign key: a prompt is shared by identical
-- requests, and a deletion removes it with the last message that refers to it
-- (feedback/retention.py).
ALTER TABLE messages ADD COLUMN prompt_id TEXT;
