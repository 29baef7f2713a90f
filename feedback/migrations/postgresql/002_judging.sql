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
SELECT DISTINCT ON (message_id, judge) * FROM judgments
ORDER BY message_id, judge, created_at DESC, id DESC;
