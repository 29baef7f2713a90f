-- A calibrated judge abstains when its confidence is below its threshold: the judgment keeps
-- its best guess (label, harm level, confidence) for the reviewer, but gives no training label
-- and puts the answer in the review queue.

-- DuckDB refuses to alter a table that a view or an index depends on: drop both, alter,
-- recreate them as 001 and 002 did.
DROP VIEW latest_judgments;
DROP INDEX judgments_message;

ALTER TABLE judgments ADD COLUMN abstained BOOLEAN NOT NULL DEFAULT false;

CREATE INDEX judgments_message ON judgments (message_id);

CREATE VIEW latest_judgments AS
SELECT * FROM judgments
QUALIFY row_number() OVER (PARTITION BY message_id, judge ORDER BY created_at DESC, id DESC) = 1;
