-- A calibrated judge abstains when its confidence is below its threshold: the judgment keeps
-- its best guess (label, harm level, confidence) for the reviewer, but gives no training label
-- and puts the answer in the review queue.

-- DuckDB refuses to alter a table a view depends on: drop the view, alter, recreate it as 002 did.
DROP VIEW latest_judgments;

ALTER TABLE judgments ADD COLUMN abstained BOOLEAN NOT NULL DEFAULT false;

CREATE VIEW latest_judgments AS
SELECT * FROM judgments
QUALIFY row_number() OVER (PARTITION BY message_id, judge ORDER BY created_at DESC, id DESC) = 1;
