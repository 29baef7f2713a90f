-- Access: accounts with roles, operator review details, and the provenance that ties
-- training rows to adapters (so that a deletion can be traced to what was trained on it).

CREATE TABLE users (
    id             TEXT PRIMARY KEY,
    role           TEXT NOT NULL CHECK (role IN ('user', 'operator', 'admin')),
    password_hash  TEXT,           -- argon2id; NULL: no password sign-in (API key only)
    api_key_hash   TEXT UNIQUE,    -- sha256 of a 256-bit random key; the key itself is shown once
    disabled       BOOLEAN NOT NULL DEFAULT false,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
);

-- whether the judge's label was right, as the operator saw it
ALTER TABLE reviews ADD COLUMN judge_correct BOOLEAN;

CREATE TABLE adapter_provenance (
    adapter_version TEXT NOT NULL,
    message_id      TEXT NOT NULL,
    PRIMARY KEY (adapter_version, message_id)
);

CREATE VIEW latest_reviews AS
SELECT DISTINCT ON (message_id) * FROM reviews
ORDER BY message_id, created_at DESC, id DESC;
