-- The metadata database shared by all agents. Portable between SQLite and
-- Postgres; times are unix milliseconds by the database's own clock.

CREATE TABLE topics (
    name            TEXT PRIMARY KEY,
    partitions      BIGINT NOT NULL,
    retention_ms    BIGINT NOT NULL,
    retention_bytes BIGINT NOT NULL,
    segment_bytes   BIGINT NOT NULL,
    segment_ms      BIGINT NOT NULL,
    created_at      BIGINT NOT NULL
);

-- One row per partition, created with the topic and never deleted while the
-- topic exists. The epoch only grows, and only when the holder changes.
CREATE TABLE leases (
    topic      TEXT NOT NULL,
    partition  BIGINT NOT NULL,
    holder     TEXT,
    epoch      BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    -- 1 while the holder has acknowledged records that are not yet committed
    -- to object storage: another agent may not take the partition over then
    -- (unless unclean takeover is enabled).
    dirty      BIGINT NOT NULL,
    PRIMARY KEY (topic, partition)
);

CREATE TABLE agents (
    agent_id     TEXT PRIMARY KEY,
    address      TEXT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    started_at   BIGINT NOT NULL
);

CREATE TABLE producers (
    producer_id BIGINT PRIMARY KEY,
    name        TEXT,
    epoch       BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE UNIQUE INDEX producers_by_name ON producers (name);
