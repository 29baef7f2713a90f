-- The served-prompt record: every answer points at the exact messages the engine received
-- (system prompt, safety reminder, history), stored once per distinct prompt. Live judging, the
-- judging sweep and the dataset builder all read it; nothing rebuilds "the conversation before".

CREATE TABLE prompts (
    -- sha256 (hex) of the canonical JSON of ``messages`` (keys sorted, no spaces, UTF-8); a
    -- prompt rebuilt below starts with 'reconstructed:', so it never merges with a served one
    id             TEXT PRIMARY KEY,
    messages       JSON NOT NULL,      -- [{"content": ..., "role": ...}, ...], in order
    -- rebuilt by this migration for an answer written before it, not recorded when served
    reconstructed  BOOLEAN NOT NULL DEFAULT false,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

-- NULL only on a user or system message. No foreign key: a prompt is shared by identical
-- requests, and a deletion removes it with the last message that refers to it
-- (feedback/retention.py).
ALTER TABLE messages ADD COLUMN prompt_id TEXT;

-- Answers written before this migration: their prompt rebuilt the way the dataset builder did.
-- The conversation's system and user messages, plus, for each earlier question, the answer the
-- user saw last before asking the next one (the latest complete answer created before it;
-- siblings and failed answers left out), up to and including the question being answered. The
-- system prompt and any safety reminder were not recorded then: they are missing here
-- (messages.safety_reminder still says whether a reminder was added).
CREATE TEMP TABLE _rebuilt AS
WITH questions AS (
    SELECT id, lead(created_at) OVER (PARTITION BY conversation_id ORDER BY created_at, id) AS next_at
    FROM messages WHERE role = 'user'
), shown AS (
    SELECT a.id, a.conversation_id, a.role, a.content, a.created_at
    FROM messages a JOIN questions q ON q.id = a.parent_id
    WHERE a.role = 'assistant' AND a.status = 'complete' AND (q.next_at IS NULL OR a.created_at < q.next_at)
    QUALIFY row_number() OVER (PARTITION BY a.parent_id ORDER BY a.created_at DESC, a.id DESC) = 1
), thread AS (
    SELECT id, conversation_id, role, content, created_at FROM messages WHERE role IN ('system', 'user')
    UNION ALL
    SELECT * FROM shown
), running AS (
    SELECT id, role, list({'content': content, 'role': role}) OVER (
        PARTITION BY conversation_id
        ORDER BY created_at, CASE role WHEN 'system' THEN 0 WHEN 'user' THEN 1 ELSE 2 END, id
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS messages
    FROM thread
)
SELECT id AS parent_id, 'reconstructed:' || sha256(to_json(messages)) AS prompt_id, to_json(messages) AS messages
FROM running
WHERE role = 'user' AND id IN (SELECT parent_id FROM messages WHERE role = 'assistant');

INSERT INTO prompts (id, messages, reconstructed)
SELECT prompt_id, any_value(messages), true FROM _rebuilt GROUP BY prompt_id;

UPDATE messages SET prompt_id = r.prompt_id
FROM _rebuilt r
WHERE messages.role = 'assistant' AND messages.parent_id = r.parent_id;

DROP TABLE _rebuilt;
