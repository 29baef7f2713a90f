-- A calibrated judge abstains when its confidence is below its threshold: the judgment keeps
-- its best guess (label, harm level, confidence) for the reviewer, but gives no training label
-- and puts the answer in the review queue.

-- A view's SELECT * is expanded when the view is made: drop it and make it again so that it
-- shows the new column, as ../004_judge_abstention.sql does.
DROP VIEW latest_judgments;

ALTER TABLE judgments ADD COLUMN abstained BOOLEAN NOT NULL DEFAULT false;

CREATE VIEW latest_judgments AS
SELECT DISTINCT ON (message_id, judge) * FROM judgments
ORDER BY message_id, judge, created_at DESC, id DESC;
