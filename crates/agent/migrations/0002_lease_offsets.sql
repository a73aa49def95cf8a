-- The holder publishes its partition's offsets on every renewal (in the same
-- epoch-fenced UPDATE), so any agent can answer metadata for any partition.
ALTER TABLE leases ADD COLUMN high_watermark BIGINT NOT NULL DEFAULT 0;
ALTER TABLE leases ADD COLUMN log_start_offset BIGINT NOT NULL DEFAULT 0;
