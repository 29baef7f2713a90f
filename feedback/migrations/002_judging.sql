-- Judging: failed attempts (so an outage delays judgments instead of dropping them) and the
-- safety reminder flag of each answer (the CARES mitigation).

ALTER TABLE messages ADD COLUMN safety_reminder BOOLEAN DEFAULT false;

CREATE TABLE judge_attempts (
    message_id  TEXT NOT NULL,
    judge       TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    last_error  TEXT NOT NULL,
    last_at     TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (message_id, judge)
);

CREATE VIEW latest_judgments AS
SELECT * FROM judgments
QUALIFY row_number() OVER (PARTITION BY message_id, judge ORDER BY created_at DESC, id DESC) = 1;
