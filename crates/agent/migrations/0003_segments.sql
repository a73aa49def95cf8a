-- Segments in object storage. A row is written in the same transaction that
-- moves the partition's committed offset, guarded by the writer's lease epoch.
CREATE TABLE segments (
    topic       TEXT NOT NULL,
    partition   BIGINT NOT NULL,
    base_offset BIGINT NOT NULL,
    next_offset BIGINT NOT NULL,
    epoch       BIGINT NOT NULL,
    object_key  TEXT NOT NULL,
    size_bytes  BIGINT NOT NULL,
    records     BIGINT NOT NULL,
    min_ts      BIGINT NOT NULL,
    max_ts      BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (topic, partition, base_offset)
);

-- Offset below which every record is in a committed segment.
ALTER TABLE leases ADD COLUMN committed_offset BIGINT NOT NULL DEFAULT 0;
