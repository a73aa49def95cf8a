-- API keys. Portable between SQLite and Postgres: times are unix milliseconds
-- (BIGINT), the secret is stored only as a hex SHA-256 hash.
CREATE TABLE api_keys (
    key_id       TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    -- Space-separated scopes (a scope never contains a space).
    scopes       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    last_used_at BIGINT,
    rotated_from TEXT
);

CREATE INDEX api_keys_by_created ON api_keys (created_at, key_id);

-- At most one row: the key `bootstrap-admin` created. Its primary key makes a
-- second bootstrap fail atomically, even when two run at once.
CREATE TABLE bootstrap (
    id         BIGINT PRIMARY KEY CHECK (id = 1),
    key_id     TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
