-- carecycle record, version 1 (PostgreSQL dialect: the same tables and views as
-- ../001_initial.sql; QUALIFY becomes DISTINCT ON, DOUBLE becomes DOUBLE PRECISION).
-- Ids are immutable text ids chosen by the application (uuid-based), so that a row can be
-- referred to from outside (an OpenAI completion id is an assistant message id).

CREATE TABLE conversations (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE TABLE messages (
    id                TEXT PRIMARY KEY,
    conversation_id   TEXT NOT NULL REFERENCES conversations (id),
    -- the user message an answer replies to; answers sharing a parent are siblings
    -- (regenerations)
    parent_id         TEXT,
    role              TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content           TEXT NOT NULL,
    -- 'complete', or 'error' for an answer the engine failed to finish (partial content)
    status            TEXT NOT NULL DEFAULT 'complete' CHECK (status IN ('complete', 'error')),
    error             TEXT,
    model_id          TEXT,
    adapter_version   TEXT,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    latency_ms        DOUBLE PRECISION,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

-- Every vote ever cast; the current vote of a user on a message is the latest one
-- (view current_feedback). Replaced votes stay for history.
CREATE SEQUENCE feedback_seq;
CREATE TABLE feedback (
    seq         BIGINT PRIMARY KEY DEFAULT nextval('feedback_seq'),
    message_id  TEXT NOT NULL REFERENCES messages (id),
    user_id     TEXT NOT NULL,
    rating      TEXT NOT NULL CHECK (rating IN ('up', 'down')),
    reason      TEXT,
    comment     TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE VIEW current_feedback AS
SELECT DISTINCT ON (message_id, user_id) * FROM feedback
ORDER BY message_id, user_id, seq DESC;

CREATE TABLE judgments (
    id            TEXT PRIMARY KEY,
    message_id    TEXT NOT NULL REFERENCES messages (id),
    judge         TEXT NOT NULL,
    judge_version TEXT NOT NULL,
    label         TEXT CHECK (label IN ('Accept', 'Caution', 'Refuse')),
    harm_level    INTEGER CHECK (harm_level BETWEEN 0 AND 3),
    confidence    DOUBLE PRECISION,
    score         DOUBLE PRECISION,
    unsafe_compliance BOOLEAN,
    over_refusal  BOOLEAN,
    raw_output    TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE TABLE reviews (
    id                TEXT PRIMARY KEY,
    message_id        TEXT NOT NULL REFERENCES messages (id),
    operator_id       TEXT NOT NULL,
    label             TEXT NOT NULL CHECK (label IN ('Accept', 'Caution', 'Refuse')),
    harm_level        INTEGER CHECK (harm_level BETWEEN 0 AND 3),
    verdict           TEXT NOT NULL CHECK (verdict IN ('desirable', 'undesirable')),
    corrected_answer  TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE TABLE adapters (
    version       TEXT PRIMARY KEY,
    parent        TEXT,
    method        TEXT,
    path          TEXT NOT NULL,
    checksum      TEXT,
    status        TEXT NOT NULL CHECK (status IN ('candidate', 'active', 'previous', 'rejected', 'retired')),
    base_model    TEXT,
    snapshot_id   TEXT,
    metrics       JSON,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE TABLE cycles (
    id           TEXT PRIMARY KEY,
    status       TEXT NOT NULL CHECK (status IN ('running', 'promoted', 'kept', 'failed', 'interrupted', 'awaiting_approval')),
    trigger      TEXT NOT NULL,
    step         TEXT,
    detail       JSON,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    finished_at  TIMESTAMPTZ
);

CREATE SEQUENCE audit_seq;
CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY DEFAULT nextval('audit_seq'),
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT,
    detail     JSON,
    created_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

CREATE INDEX messages_conversation ON messages (conversation_id);
CREATE INDEX feedback_message ON feedback (message_id);
CREATE INDEX judgments_message ON judgments (message_id);
