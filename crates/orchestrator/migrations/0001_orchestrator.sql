-- The orchestrator's state. One schema for SQLite and Postgres (sqlx Any):
-- times are unix milliseconds, JSON is text, booleans are 0/1, ids are
-- hyphenated UUID strings.

-- Registered templates; a (namespace, name, version) never changes body.
CREATE TABLE templates (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    description TEXT,
    source TEXT NOT NULL,
    step_count BIGINT NOT NULL,
    registered_at BIGINT NOT NULL,
    PRIMARY KEY (namespace, name, version)
);

CREATE TABLE tasks (
    task_uuid TEXT PRIMARY KEY,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    state TEXT NOT NULL,
    context TEXT NOT NULL,
    initiator TEXT NOT NULL,
    source_system TEXT NOT NULL,
    reason TEXT NOT NULL,
    priority BIGINT,
    tags TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    parent_correlation_id TEXT,
    -- Duplicate protection: NULL when the template's strategy creates every request.
    identity_hash TEXT UNIQUE,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    completed_at BIGINT,
    -- When the task entered its current state (staleness).
    state_since BIGINT NOT NULL,
    -- Transitions of the task and its steps so far (one sequence for both).
    seq BIGINT NOT NULL
);
CREATE INDEX tasks_by_template ON tasks (namespace, name, created_at);
CREATE INDEX tasks_by_state ON tasks (state, created_at);
CREATE INDEX tasks_by_created ON tasks (created_at);

CREATE TABLE task_tags (
    task_uuid TEXT NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (tag, task_uuid)
);

CREATE TABLE steps (
    step_uuid TEXT PRIMARY KEY,
    task_uuid TEXT NOT NULL,
    idx BIGINT NOT NULL,
    name TEXT NOT NULL,
    handler TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    retryable BIGINT NOT NULL,
    total_parents BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    completed_at BIGINT,
    last_attempted_at BIGINT,
    last_failure_at BIGINT,
    next_retry_at BIGINT,
    backoff_request_ms BIGINT,
    -- The successful result (JSON object), or the last failure ({message, error_type, retryable}).
    results TEXT,
    error TEXT
);
CREATE INDEX steps_by_task ON steps (task_uuid, idx);

-- DAG edges of each task's steps.
CREATE TABLE step_edges (
    task_uuid TEXT NOT NULL,
    parent_uuid TEXT NOT NULL,
    child_uuid TEXT NOT NULL,
    PRIMARY KEY (parent_uuid, child_uuid)
);
CREATE INDEX step_edges_by_task ON step_edges (task_uuid);

-- Append-only; the latest row of each task has most_recent = 1.
CREATE TABLE task_transitions (
    transition_uuid TEXT PRIMARY KEY,
    task_uuid TEXT NOT NULL,
    seq BIGINT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    most_recent BIGINT NOT NULL
);
CREATE INDEX task_transitions_by_task ON task_transitions (task_uuid, seq);

-- Append-only, and the step audit: who moved the step, with what result.
CREATE TABLE step_transitions (
    transition_uuid TEXT PRIMARY KEY,
    audit_uuid TEXT NOT NULL,
    step_uuid TEXT NOT NULL,
    task_uuid TEXT NOT NULL,
    seq BIGINT NOT NULL,
    from_state TEXT,
    to_state TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempt BIGINT NOT NULL,
    worker_uuid TEXT,
    performed_by TEXT,
    success BIGINT,
    execution_time_ms BIGINT,
    result TEXT,
    created_at BIGINT NOT NULL,
    most_recent BIGINT NOT NULL
);
CREATE INDEX step_transitions_by_step ON step_transitions (step_uuid, seq);
CREATE INDEX step_transitions_by_task ON step_transitions (task_uuid, seq);

-- The investigation tracker: at most one pending entry per task.
CREATE TABLE dlq_entries (
    dlq_entry_uuid TEXT PRIMARY KEY,
    task_uuid TEXT NOT NULL,
    original_state TEXT NOT NULL,
    reason TEXT NOT NULL,
    resolution_status TEXT NOT NULL,
    resolution_at BIGINT,
    resolution_notes TEXT,
    resolved_by TEXT,
    task_snapshot TEXT NOT NULL,
    metadata TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX dlq_by_task ON dlq_entries (task_uuid, created_at);
CREATE INDEX dlq_by_status ON dlq_entries (resolution_status, created_at);
