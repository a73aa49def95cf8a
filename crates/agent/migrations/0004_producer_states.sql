-- Idempotence state as of the committed offset, written in the same
-- transaction as each segment commit, so dedup survives WAL deletion, disk
-- loss and a move to another agent. `batches` is the last five batches as
-- "base_sequence:count:base_offset:append_time_ms" joined by ",".
CREATE TABLE producer_states (
    topic       TEXT NOT NULL,
    partition   BIGINT NOT NULL,
    producer_id BIGINT NOT NULL,
    epoch       BIGINT NOT NULL,
    batches     TEXT NOT NULL,
    PRIMARY KEY (topic, partition, producer_id)
);
