-- The latest append time (unix ms) of the records in a segment: a new leader
-- never stamps below it, so append times stay non-decreasing along a partition
-- across leader changes. Rows written before this migration have 0.
ALTER TABLE segments ADD COLUMN max_append_ms BIGINT NOT NULL DEFAULT 0;
