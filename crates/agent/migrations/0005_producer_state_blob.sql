-- Idempotence state in a typed, checked encoding (producers::ProducerState):
-- version byte, batch count, fixed-size entries, CRC-32. A row that does not
-- decode is corruption, never skipped. Rows written before this migration
-- keep the text form in `batches` (parsed strictly) until their next commit.
ALTER TABLE producer_states ADD COLUMN state BYTEA;
