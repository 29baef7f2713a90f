-- A calibrated judge abstains when its confidence is below its threshold: the judgment keeps
-- its best guess (label, harm level, confidence) for the reviewer, but gives no training label
-- and puts the answer in the review queue.

ALTER TABLE judgments ADD COLUMN abstained BOOLEAN NOT NULL DEFAULT false;
