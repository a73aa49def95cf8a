//! The orchestrator's database: one schema and one set of queries for SQLite
//! and Postgres through `cairn_service::sql`. The engine writes only through
//! [`Store::commit`], one transaction per batch of state changes (group
//! commit); the API reads committed rows directly.

use std::collections::HashMap;

use sqlx::{AnyPool, Row, any::AnyRow};

/// A database failure.
pub type Error = sqlx::Error;

/// One task's row.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub task_uuid: String,
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub state: String,
    pub context: String,
    pub initiator: String,
    pub source_system: String,
    pub reason: String,
    pub priority: Option<i64>,
    pub tags: Vec<String>,
    pub correlation_id: String,
    pub parent_correlation_id: Option<String>,
    pub identity_hash: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub completed_at: Option<i64>,
    pub state_since: i64,
    pub seq: i64,
}

/// One step's row.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRow {
    pub step_uuid: String,
    pub task_uuid: String,
    pub idx: i64,
    pub name: String,
    pub handler: String,
    pub state: String,
    pub attempts: i64,
    pub max_attempts: i64,
    pub retryable: bool,
    pub total_parents: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub completed_at: Option<i64>,
    pub last_attempted_at: Option<i64>,
    pub last_failure_at: Option<i64>,
    pub next_retry_at: Option<i64>,
    pub backoff_request_ms: Option<i64>,
    pub results: Option<String>,
    pub error: Option<String>,
}

/// A row of `task_transitions`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskTransition {
    pub transition_uuid: String,
    pub task_uuid: String,
    pub seq: i64,
    pub from_state: Option<String>,
    pub to_state: String,
    pub reason: String,
    pub created_at: i64,
}

/// A row of `step_transitions` (the step audit).
#[derive(Debug, Clone, PartialEq)]
pub struct StepTransition {
    pub transition_uuid: String,
    pub audit_uuid: String,
    pub step_uuid: String,
    pub task_uuid: String,
    pub seq: i64,
    pub from_state: Option<String>,
    pub to_state: String,
    pub reason: String,
    pub attempt: i64,
    pub worker_uuid: Option<String>,
    pub performed_by: Option<String>,
    pub success: Option<bool>,
    pub execution_time_ms: Option<i64>,
    pub result: Option<String>,
    pub created_at: i64,
}

/// A DLQ entry.
#[derive(Debug, Clone, PartialEq)]
pub struct DlqRow {
    pub dlq_entry_uuid: String,
    pub task_uuid: String,
    pub original_state: String,
    pub reason: String,
    pub resolution_status: String,
    pub resolution_at: Option<i64>,
    pub resolution_notes: Option<String>,
    pub resolved_by: Option<String>,
    pub task_snapshot: String,
    pub metadata: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A registered template's row.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateRow {
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub description: Option<String>,
    pub source: String,
    pub step_count: i64,
    pub registered_at: i64,
}

/// A new task with its steps and DAG edges `(parent, child)`.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub task: TaskRow,
    pub steps: Vec<StepRow>,
    pub edges: Vec<(String, String)>,
}

/// Everything one engine round changes, written in one transaction.
#[derive(Debug, Default)]
pub struct Batch {
    pub templates: Vec<TemplateRow>,
    pub new_tasks: Vec<NewTask>,
    pub task_transitions: Vec<TaskTransition>,
    pub step_transitions: Vec<StepTransition>,
    /// Final rows of tasks and steps that changed (already existing ones).
    pub tasks: Vec<TaskRow>,
    pub steps: Vec<StepRow>,
    pub dlq: Vec<DlqRow>,
    /// Investigation updates of existing entries.
    pub dlq_updates: Vec<DlqUpdate>,
}

/// An investigation update: unset fields stay as they are.
#[derive(Debug, Clone)]
pub struct DlqUpdate {
    pub dlq_entry_uuid: String,
    pub status: Option<String>,
    pub notes: Option<String>,
    pub resolved_by: Option<String>,
    pub metadata: Option<String>,
    pub at: i64,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
            && self.new_tasks.is_empty()
            && self.task_transitions.is_empty()
            && self.step_transitions.is_empty()
            && self.tasks.is_empty()
            && self.steps.is_empty()
            && self.dlq.is_empty()
            && self.dlq_updates.is_empty()
    }
}

/// Values bound into a statement, whatever their type.
enum Value<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

fn bind<'q>(query: Query<'q>, value: Value<'q>) -> Query<'q> {
    match value {
        Value::Text(v) => query.bind(v),
        Value::OptText(v) => query.bind(v),
        Value::Int(v) => query.bind(v),
        Value::OptInt(v) => query.bind(v),
    }
}

/// Most bound values per statement. SQLite allows 32766 and Postgres 65535,
/// but numbered placeholders cost SQLite time quadratic in their count
/// (sqlx asks each one's name, a linear search): SQLite statements use
/// anonymous `?` and Postgres ones `$n` (a batch of 4,200 rows took 1.5 s at
/// 8,000 numbered values per statement, 75 ms at 256).
const MAX_PARAMS: usize = 256;

/// The placeholder of the `n`th value (from 1) in `sql`.
fn placeholder(sql: &mut String, sqlite: bool, n: usize) {
    if sqlite {
        sql.push('?');
    } else {
        sql.push('$');
        sql.push_str(&n.to_string());
    }
}

/// Inserts `rows` (each `columns` values) with as few multi-row statements as
/// the parameter limit allows; `tail` follows the values (an ON CONFLICT).
async fn insert_rows<'a>(
    conn: &mut sqlx::AnyConnection,
    sqlite: bool,
    head: &str,
    columns: usize,
    rows: Vec<Vec<Value<'a>>>,
    tail: &str,
) -> Result<(), Error> {
    let per = (MAX_PARAMS / columns).max(1);
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<Value<'a>>> = rows.by_ref().take(per).collect();
        let mut sql = String::with_capacity(head.len() + chunk.len() * columns * 5);
        sql.push_str(head);
        sql.push_str(" VALUES ");
        let mut n = 0;
        for (r, _) in chunk.iter().enumerate() {
            if r > 0 {
                sql.push(',');
            }
            sql.push('(');
            for c in 0..columns {
                if c > 0 {
                    sql.push(',');
                }
                n += 1;
                placeholder(&mut sql, sqlite, n);
            }
            sql.push(')');
        }
        sql.push_str(tail);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for value in chunk.into_iter().flatten() {
            query = bind(query, value);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// `UPDATE … SET most_recent = 0 WHERE <key> IN (…) AND most_recent = 1`.
async fn clear_most_recent(
    conn: &mut sqlx::AnyConnection,
    sqlite: bool,
    table: &str,
    key: &str,
    ids: &[&str],
) -> Result<(), Error> {
    for chunk in ids.chunks(MAX_PARAMS) {
        let mut sql = format!("UPDATE {table} SET most_recent = 0 WHERE most_recent = 1 AND {key} IN (");
        for n in 1..=chunk.len() {
            if n > 1 {
                sql.push(',');
            }
            placeholder(&mut sql, sqlite, n);
        }
        sql.push(')');
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            query = query.bind(*id);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// A task's values; `tags` is its tag list encoded as JSON.
fn task_values<'a>(t: &'a TaskRow, tags: &'a str) -> Vec<Value<'a>> {
    vec![
        Value::Text(&t.task_uuid),
        Value::Text(&t.namespace),
        Value::Text(&t.name),
        Value::Text(&t.version),
        Value::Text(&t.state),
        Value::Text(&t.context),
        Value::Text(&t.initiator),
        Value::Text(&t.source_system),
        Value::Text(&t.reason),
        Value::OptInt(t.priority),
        Value::Text(tags),
        Value::Text(&t.correlation_id),
        Value::OptText(t.parent_correlation_id.as_deref()),
        Value::OptText(t.identity_hash.as_deref()),
        Value::Int(t.created_at),
        Value::Int(t.updated_at),
        Value::OptInt(t.completed_at),
        Value::Int(t.state_since),
        Value::Int(t.seq),
    ]
}

const TASK_COLUMNS: &str = "task_uuid, namespace, name, version, state, context, initiator, source_system, reason, priority, tags, correlation_id, parent_correlation_id, identity_hash, created_at, updated_at, completed_at, state_since, seq";
const STEP_COLUMNS: &str = "step_uuid, task_uuid, idx, name, handler, state, attempts, max_attempts, retryable, total_parents, created_at, updated_at, completed_at, last_attempted_at, last_failure_at, next_retry_at, backoff_request_ms, results, error";
const DLQ_COLUMNS: &str = "dlq_entry_uuid, task_uuid, original_state, reason, resolution_status, resolution_at, resolution_notes, resolved_by, task_snapshot, metadata, created_at, updated_at";

fn step_values(s: &StepRow) -> Vec<Value<'_>> {
    vec![
        Value::Text(&s.step_uuid),
        Value::Text(&s.task_uuid),
        Value::Int(s.idx),
        Value::Text(&s.name),
        Value::Text(&s.handler),
        Value::Text(&s.state),
        Value::Int(s.attempts),
        Value::Int(s.max_attempts),
        Value::Int(i64::from(s.retryable)),
        Value::Int(s.total_parents),
        Value::Int(s.created_at),
        Value::Int(s.updated_at),
        Value::OptInt(s.completed_at),
        Value::OptInt(s.last_attempted_at),
        Value::OptInt(s.last_failure_at),
        Value::OptInt(s.next_retry_at),
        Value::OptInt(s.backoff_request_ms),
        Value::OptText(s.results.as_deref()),
        Value::OptText(s.error.as_deref()),
    ]
}

fn dlq_values(d: &DlqRow) -> Vec<Value<'_>> {
    vec![
        Value::Text(&d.dlq_entry_uuid),
        Value::Text(&d.task_uuid),
        Value::Text(&d.original_state),
        Value::Text(&d.reason),
        Value::Text(&d.resolution_status),
        Value::OptInt(d.resolution_at),
        Value::OptText(d.resolution_notes.as_deref()),
        Value::OptText(d.resolved_by.as_deref()),
        Value::Text(&d.task_snapshot),
        Value::OptText(d.metadata.as_deref()),
        Value::Int(d.created_at),
        Value::Int(d.updated_at),
    ]
}

fn task_from_row(row: &AnyRow) -> Result<TaskRow, Error> {
    let tags: String = row.try_get("tags")?;
    Ok(TaskRow {
        task_uuid: row.try_get("task_uuid")?,
        namespace: row.try_get("namespace")?,
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        state: row.try_get("state")?,
        context: row.try_get("context")?,
        initiator: row.try_get("initiator")?,
        source_system: row.try_get("source_system")?,
        reason: row.try_get("reason")?,
        priority: row.try_get("priority")?,
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        correlation_id: row.try_get("correlation_id")?,
        parent_correlation_id: row.try_get("parent_correlation_id")?,
        identity_hash: row.try_get("identity_hash")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        completed_at: row.try_get("completed_at")?,
        state_since: row.try_get("state_since")?,
        seq: row.try_get("seq")?,
    })
}

fn step_from_row(row: &AnyRow) -> Result<StepRow, Error> {
    let retryable: i64 = row.try_get("retryable")?;
    Ok(StepRow {
        step_uuid: row.try_get("step_uuid")?,
        task_uuid: row.try_get("task_uuid")?,
        idx: row.try_get("idx")?,
        name: row.try_get("name")?,
        handler: row.try_get("handler")?,
        state: row.try_get("state")?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        retryable: retryable != 0,
        total_parents: row.try_get("total_parents")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        completed_at: row.try_get("completed_at")?,
        last_attempted_at: row.try_get("last_attempted_at")?,
        last_failure_at: row.try_get("last_failure_at")?,
        next_retry_at: row.try_get("next_retry_at")?,
        backoff_request_ms: row.try_get("backoff_request_ms")?,
        results: row.try_get("results")?,
        error: row.try_get("error")?,
    })
}

fn dlq_from_row(row: &AnyRow) -> Result<DlqRow, Error> {
    Ok(DlqRow {
        dlq_entry_uuid: row.try_get("dlq_entry_uuid")?,
        task_uuid: row.try_get("task_uuid")?,
        original_state: row.try_get("original_state")?,
        reason: row.try_get("reason")?,
        resolution_status: row.try_get("resolution_status")?,
        resolution_at: row.try_get("resolution_at")?,
        resolution_notes: row.try_get("resolution_notes")?,
        resolved_by: row.try_get("resolved_by")?,
        task_snapshot: row.try_get("task_snapshot")?,
        metadata: row.try_get("metadata")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn step_transition_from_row(row: &AnyRow) -> Result<StepTransition, Error> {
    let success: Option<i64> = row.try_get("success")?;
    Ok(StepTransition {
        transition_uuid: row.try_get("transition_uuid")?,
        audit_uuid: row.try_get("audit_uuid")?,
        step_uuid: row.try_get("step_uuid")?,
        task_uuid: row.try_get("task_uuid")?,
        seq: row.try_get("seq")?,
        from_state: row.try_get("from_state")?,
        to_state: row.try_get("to_state")?,
        reason: row.try_get("reason")?,
        attempt: row.try_get("attempt")?,
        worker_uuid: row.try_get("worker_uuid")?,
        performed_by: row.try_get("performed_by")?,
        success: success.map(|s| s != 0),
        execution_time_ms: row.try_get("execution_time_ms")?,
        result: row.try_get("result")?,
        created_at: row.try_get("created_at")?,
    })
}

/// One entry of a task's history, task or step transition, in commit order.
#[derive(Debug, Clone, PartialEq)]
pub enum History {
    Task(TaskTransition),
    Step(StepTransition, String),
}

impl History {
    pub fn seq(&self) -> i64 {
        match self {
            History::Task(t) => t.seq,
            History::Step(s, _) => s.seq,
        }
    }
}

/// What ListTasks filters on; every field optional.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub states: Vec<String>,
    pub created_from: Option<i64>,
    pub created_to: Option<i64>,
    pub initiator: Option<String>,
    /// Tasks carrying every one of these tags.
    pub tags: Vec<String>,
    /// A column of `tasks` (checked by the caller) and whether ascending.
    pub sort: (&'static str, bool),
    pub limit: i64,
    pub offset: i64,
}

/// Counts per state.
pub type StateCounts = HashMap<String, i64>;

/// The database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    /// The engine's own connections: its commits and reads never queue
    /// behind API reads.
    writer: AnyPool,
    max_connections: u32,
    /// SQLite (else Postgres): the few statements whose SQL differs.
    sqlite: bool,
}

impl Store {
    /// Connects to `url` and applies migrations.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Store> {
        let writer = cairn_service::sql::connect(url, 2, sqlx::migrate!("./migrations")).await?;
        let pool = cairn_service::sql::connect(url, max_connections, sqlx::migrate!("./migrations")).await?;
        Ok(Store {
            pool,
            writer,
            max_connections,
            sqlite: cairn_service::sql::is_sqlite(url),
        })
    }

    /// The same store on the engine's own connections.
    pub fn for_engine(&self) -> Store {
        Store {
            pool: self.writer.clone(),
            writer: self.writer.clone(),
            max_connections: 2,
            sqlite: self.sqlite,
        }
    }

    /// Pool figures: (in use, idle, max).
    pub fn pool_usage(&self) -> (u32, u32, u32) {
        let size = self.pool.size();
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        (size.saturating_sub(idle), idle, self.max_connections)
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ())
    }

    /// Writes one batch in one transaction.
    pub async fn commit(&self, batch: &Batch) -> Result<(), Error> {
        let mut tx = self.pool.begin().await?;
        let conn = &mut *tx;
        if !batch.templates.is_empty() {
            let rows = batch
                .templates
                .iter()
                .map(|t| {
                    vec![
                        Value::Text(&t.namespace),
                        Value::Text(&t.name),
                        Value::Text(&t.version),
                        Value::OptText(t.description.as_deref()),
                        Value::Text(&t.source),
                        Value::Int(t.step_count),
                        Value::Int(t.registered_at),
                    ]
                })
                .collect();
            insert_rows(
                conn,
                self.sqlite,
                "INSERT INTO templates (namespace, name, version, description, source, step_count, registered_at)",
                7,
                rows,
                "",
            )
            .await?;
        }
        let tags_json: Vec<String> = batch
            .new_tasks
            .iter()
            .map(|n| &n.task)
            .chain(&batch.tasks)
            .map(|t| serde_json::to_string(&t.tags).unwrap_or_else(|_| "[]".into()))
            .collect();
        if !batch.new_tasks.is_empty() {
            let tasks = batch
                .new_tasks
                .iter()
                .zip(&tags_json)
                .map(|(n, tags)| task_values(&n.task, tags))
                .collect();
            insert_rows(
                conn,
                self.sqlite,
                &format!("INSERT INTO tasks ({TASK_COLUMNS})"),
                19,
                tasks,
                "",
            )
            .await?;
            let tags = batch
                .new_tasks
                .iter()
                .flat_map(|n| {
                    let mut unique: Vec<&String> = n.task.tags.iter().collect();
                    unique.sort();
                    unique.dedup();
                    unique
                        .into_iter()
                        .map(|tag| vec![Value::Text(&n.task.task_uuid), Value::Text(tag)])
                })
                .collect::<Vec<_>>();
            if !tags.is_empty() {
                insert_rows(conn, self.sqlite, "INSERT INTO task_tags (task_uuid, tag)", 2, tags, "").await?;
            }
            let steps = batch
                .new_tasks
                .iter()
                .flat_map(|n| n.steps.iter().map(step_values))
                .collect();
            insert_rows(
                conn,
                self.sqlite,
                &format!("INSERT INTO steps ({STEP_COLUMNS})"),
                19,
                steps,
                "",
            )
            .await?;
            let edges = batch
                .new_tasks
                .iter()
                .flat_map(|n| {
                    n.edges.iter().map(|(p, c)| {
                        vec![
                            Value::Text(&n.task.task_uuid),
                            Value::Text(p.as_str()),
                            Value::Text(c.as_str()),
                        ]
                    })
                })
                .collect::<Vec<_>>();
            if !edges.is_empty() {
                insert_rows(
                    conn,
                    self.sqlite,
                    "INSERT INTO step_edges (task_uuid, parent_uuid, child_uuid)",
                    3,
                    edges,
                    "",
                )
                .await?;
            }
        }
        if !batch.task_transitions.is_empty() {
            let mut ids: Vec<&str> = batch.task_transitions.iter().map(|t| t.task_uuid.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            clear_most_recent(conn, self.sqlite, "task_transitions", "task_uuid", &ids).await?;
            let mut last: HashMap<&str, i64> = HashMap::new();
            for t in &batch.task_transitions {
                let seq = last.entry(&t.task_uuid).or_insert(t.seq);
                *seq = (*seq).max(t.seq);
            }
            let rows = batch
                .task_transitions
                .iter()
                .map(|t| {
                    vec![
                        Value::Text(&t.transition_uuid),
                        Value::Text(&t.task_uuid),
                        Value::Int(t.seq),
                        Value::OptText(t.from_state.as_deref()),
                        Value::Text(&t.to_state),
                        Value::Text(&t.reason),
                        Value::Int(t.created_at),
                        Value::Int(i64::from(last.get(t.task_uuid.as_str()) == Some(&t.seq))),
                    ]
                })
                .collect();
            insert_rows(
                conn,
                self.sqlite,
                "INSERT INTO task_transitions (transition_uuid, task_uuid, seq, from_state, to_state, reason, created_at, most_recent)",
                8,
                rows, "")
            .await?;
        }
        if !batch.step_transitions.is_empty() {
            let mut ids: Vec<&str> = batch.step_transitions.iter().map(|t| t.step_uuid.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            clear_most_recent(conn, self.sqlite, "step_transitions", "step_uuid", &ids).await?;
            let mut last: HashMap<&str, i64> = HashMap::new();
            for t in &batch.step_transitions {
                let seq = last.entry(&t.step_uuid).or_insert(t.seq);
                *seq = (*seq).max(t.seq);
            }
            let rows = batch
                .step_transitions
                .iter()
                .map(|t| {
                    vec![
                        Value::Text(&t.transition_uuid),
                        Value::Text(&t.audit_uuid),
                        Value::Text(&t.step_uuid),
                        Value::Text(&t.task_uuid),
                        Value::Int(t.seq),
                        Value::OptText(t.from_state.as_deref()),
                        Value::Text(&t.to_state),
                        Value::Text(&t.reason),
                        Value::Int(t.attempt),
                        Value::OptText(t.worker_uuid.as_deref()),
                        Value::OptText(t.performed_by.as_deref()),
                        Value::OptInt(t.success.map(i64::from)),
                        Value::OptInt(t.execution_time_ms),
                        Value::OptText(t.result.as_deref()),
                        Value::Int(t.created_at),
                        Value::Int(i64::from(last.get(t.step_uuid.as_str()) == Some(&t.seq))),
                    ]
                })
                .collect();
            insert_rows(
                conn,
                self.sqlite,
                "INSERT INTO step_transitions (transition_uuid, audit_uuid, step_uuid, task_uuid, seq, from_state, to_state, reason, attempt, worker_uuid, performed_by, success, execution_time_ms, result, created_at, most_recent)",
                16,
                rows, "")
            .await?;
        }
        // Changed tasks and steps: one multi-row upsert each (a row per
        // statement would cost a round trip per state change).
        if !batch.tasks.is_empty() {
            let tags: Vec<String> = batch
                .tasks
                .iter()
                .map(|t| serde_json::to_string(&t.tags).unwrap_or_else(|_| "[]".into()))
                .collect();
            let rows = batch
                .tasks
                .iter()
                .zip(&tags)
                .map(|(t, tags)| task_values(t, tags))
                .collect();
            insert_rows(
                conn,
                self.sqlite,
                &format!("INSERT INTO tasks ({TASK_COLUMNS})"),
                19,
                rows,
                " ON CONFLICT (task_uuid) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at, completed_at = excluded.completed_at, state_since = excluded.state_since, seq = excluded.seq",
            )
            .await?;
        }
        if !batch.steps.is_empty() {
            let rows = batch.steps.iter().map(step_values).collect();
            insert_rows(
                conn,
                self.sqlite,
                &format!("INSERT INTO steps ({STEP_COLUMNS})"),
                19,
                rows,
                " ON CONFLICT (step_uuid) DO UPDATE SET state = excluded.state, attempts = excluded.attempts, updated_at = excluded.updated_at, completed_at = excluded.completed_at, last_attempted_at = excluded.last_attempted_at, last_failure_at = excluded.last_failure_at, next_retry_at = excluded.next_retry_at, backoff_request_ms = excluded.backoff_request_ms, results = excluded.results, error = excluded.error",
            )
            .await?;
        }
        if !batch.dlq.is_empty() {
            let rows = batch.dlq.iter().map(dlq_values).collect();
            insert_rows(
                conn,
                self.sqlite,
                &format!("INSERT INTO dlq_entries ({DLQ_COLUMNS})"),
                12,
                rows,
                "",
            )
            .await?;
        }
        for u in &batch.dlq_updates {
            let resolved_at = u.status.as_deref().filter(|s| *s != "pending").map(|_| u.at);
            sqlx::query(
                "UPDATE dlq_entries SET resolution_status = COALESCE($1, resolution_status), resolution_notes = COALESCE($2, resolution_notes), resolved_by = COALESCE($3, resolved_by), metadata = COALESCE($4, metadata), resolution_at = COALESCE($5, resolution_at), updated_at = $6 WHERE dlq_entry_uuid = $7",
            )
            .bind(u.status.as_deref())
            .bind(u.notes.as_deref())
            .bind(u.resolved_by.as_deref())
            .bind(u.metadata.as_deref())
            .bind(resolved_at)
            .bind(u.at)
            .bind(&u.dlq_entry_uuid)
            .execute(&mut *conn)
            .await?;
        }
        tx.commit().await
    }

    /// Every registered template's row.
    pub async fn templates(&self) -> Result<Vec<TemplateRow>, Error> {
        let rows = sqlx::query(
            "SELECT namespace, name, version, description, source, step_count, registered_at FROM templates ORDER BY namespace, name, version",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TemplateRow {
                    namespace: r.try_get("namespace")?,
                    name: r.try_get("name")?,
                    version: r.try_get("version")?,
                    description: r.try_get("description")?,
                    source: r.try_get("source")?,
                    step_count: r.try_get("step_count")?,
                    registered_at: r.try_get("registered_at")?,
                })
            })
            .collect()
    }

    /// Tasks not in a terminal state (what the engine recovers on start).
    pub async fn active_tasks(&self) -> Result<Vec<TaskRow>, Error> {
        let rows = sqlx::query(concat!(
            "SELECT task_uuid, namespace, name, version, state, context, initiator, source_system, reason, priority, tags, correlation_id, parent_correlation_id, identity_hash, created_at, updated_at, completed_at, state_since, seq",
            " FROM tasks WHERE state NOT IN ('complete', 'error', 'cancelled', 'resolved_manually') ORDER BY created_at"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    /// One task.
    pub async fn task(&self, task_uuid: &str) -> Result<Option<TaskRow>, Error> {
        let row = sqlx::query(concat!(
            "SELECT task_uuid, namespace, name, version, state, context, initiator, source_system, reason, priority, tags, correlation_id, parent_correlation_id, identity_hash, created_at, updated_at, completed_at, state_since, seq",
            " FROM tasks WHERE task_uuid = $1"
        ))
        .bind(task_uuid)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    /// A task's steps in template order.
    pub async fn steps(&self, task_uuid: &str) -> Result<Vec<StepRow>, Error> {
        let rows = sqlx::query(concat!(
            "SELECT step_uuid, task_uuid, idx, name, handler, state, attempts, max_attempts, retryable, total_parents, created_at, updated_at, completed_at, last_attempted_at, last_failure_at, next_retry_at, backoff_request_ms, results, error",
            " FROM steps WHERE task_uuid = $1 ORDER BY idx"
        ))
        .bind(task_uuid)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(step_from_row).collect()
    }

    /// Step counts by state for each of `task_uuids`.
    pub async fn step_counts(&self, task_uuids: &[&str]) -> Result<HashMap<String, StateCounts>, Error> {
        let mut out: HashMap<String, StateCounts> = HashMap::new();
        for chunk in task_uuids.chunks(1000) {
            if chunk.is_empty() {
                continue;
            }
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT task_uuid, state, COUNT(*) AS n FROM steps WHERE task_uuid IN ({}) GROUP BY task_uuid, state",
                placeholders.join(",")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&self.pool).await? {
                let task: String = row.try_get("task_uuid")?;
                let state: String = row.try_get("state")?;
                let n: i64 = row.try_get("n")?;
                out.entry(task).or_default().insert(state, n);
            }
        }
        Ok(out)
    }

    /// How many PENDING steps of each task have every parent done.
    pub async fn ready_counts(&self, task_uuids: &[&str]) -> Result<HashMap<String, i64>, Error> {
        let mut out = HashMap::new();
        for chunk in task_uuids.chunks(1000) {
            if chunk.is_empty() {
                continue;
            }
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT s.task_uuid, COUNT(*) AS n FROM steps s WHERE s.state = 'pending' AND s.task_uuid IN ({}) AND NOT EXISTS (SELECT 1 FROM step_edges e JOIN steps p ON p.step_uuid = e.parent_uuid WHERE e.child_uuid = s.step_uuid AND p.state NOT IN ('complete', 'resolved_manually')) GROUP BY s.task_uuid",
                placeholders.join(",")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.insert(row.try_get("task_uuid")?, row.try_get("n")?);
            }
        }
        Ok(out)
    }

    /// The task a step belongs to.
    pub async fn task_of_step(&self, step_uuid: &str) -> Result<Option<String>, Error> {
        let row = sqlx::query("SELECT task_uuid FROM steps WHERE step_uuid = $1")
            .bind(step_uuid)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("task_uuid")).transpose()
    }

    /// The task's DAG edges as (parent, child) step uuids.
    pub async fn edges(&self, task_uuid: &str) -> Result<Vec<(String, String)>, Error> {
        let rows = sqlx::query("SELECT parent_uuid, child_uuid FROM step_edges WHERE task_uuid = $1")
            .bind(task_uuid)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("parent_uuid")?, r.try_get("child_uuid")?)))
            .collect()
    }

    /// The tasks that have these identities: hash → task uuid.
    pub async fn tasks_by_identities(&self, hashes: &[&str]) -> Result<HashMap<String, String>, Error> {
        let mut out = HashMap::new();
        for chunk in hashes.chunks(1000) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT identity_hash, task_uuid FROM tasks WHERE identity_hash IN ({})",
                placeholders.join(",")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for h in chunk {
                query = query.bind(*h);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.insert(row.try_get("identity_hash")?, row.try_get("task_uuid")?);
            }
        }
        Ok(out)
    }

    /// Everything recorded of a task after `after_seq`, in order, and the
    /// sequence number it reaches. Rows up to the task's committed `seq` are
    /// read (a transition and the task's `seq` commit together), so a round
    /// committing between the two queries cannot leave a hole.
    pub async fn history(&self, task_uuid: &str, after_seq: i64) -> Result<(Vec<History>, i64), Error> {
        let upto: i64 = match sqlx::query("SELECT seq FROM tasks WHERE task_uuid = $1")
            .bind(task_uuid)
            .fetch_optional(&self.pool)
            .await?
        {
            Some(row) => row.try_get("seq")?,
            None => return Ok((Vec::new(), after_seq)),
        };
        let rows = self.history_between(task_uuid, after_seq, upto).await?;
        Ok((rows, upto.max(after_seq)))
    }

    async fn history_between(&self, task_uuid: &str, after_seq: i64, upto: i64) -> Result<Vec<History>, Error> {
        let tasks = sqlx::query(
            "SELECT transition_uuid, task_uuid, seq, from_state, to_state, reason, created_at FROM task_transitions WHERE task_uuid = $1 AND seq > $2 AND seq <= $3",
        )
        .bind(task_uuid)
        .bind(after_seq)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        let steps = sqlx::query(
            "SELECT t.transition_uuid, t.audit_uuid, t.step_uuid, t.task_uuid, t.seq, t.from_state, t.to_state, t.reason, t.attempt, t.worker_uuid, t.performed_by, t.success, t.execution_time_ms, t.result, t.created_at, s.name AS step_name FROM step_transitions t JOIN steps s ON s.step_uuid = t.step_uuid WHERE t.task_uuid = $1 AND t.seq > $2 AND t.seq <= $3",
        )
        .bind(task_uuid)
        .bind(after_seq)
        .bind(upto)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(tasks.len() + steps.len());
        for r in &tasks {
            out.push(History::Task(TaskTransition {
                transition_uuid: r.try_get("transition_uuid")?,
                task_uuid: r.try_get("task_uuid")?,
                seq: r.try_get("seq")?,
                from_state: r.try_get("from_state")?,
                to_state: r.try_get("to_state")?,
                reason: r.try_get("reason")?,
                created_at: r.try_get("created_at")?,
            }));
        }
        for r in &steps {
            out.push(History::Step(step_transition_from_row(r)?, r.try_get("step_name")?));
        }
        out.sort_by_key(History::seq);
        Ok(out)
    }

    /// Every transition of one step, newest first.
    pub async fn step_audit(&self, step_uuid: &str) -> Result<Vec<StepTransition>, Error> {
        let rows = sqlx::query(
            "SELECT transition_uuid, audit_uuid, step_uuid, task_uuid, seq, from_state, to_state, reason, attempt, worker_uuid, performed_by, success, execution_time_ms, result, created_at FROM step_transitions WHERE step_uuid = $1 ORDER BY seq DESC",
        )
        .bind(step_uuid)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(step_transition_from_row).collect()
    }

    /// A page of tasks matching `filter`, and how many match in all.
    pub async fn list_tasks(&self, filter: &TaskFilter) -> Result<(Vec<TaskRow>, i64), Error> {
        let mut clauses: Vec<String> = Vec::new();
        let mut texts: Vec<&str> = Vec::new();
        let mut ints: Vec<i64> = Vec::new();
        // Texts are bound first ($T1.. become $1..), integers after them.
        if let Some(ns) = &filter.namespace {
            texts.push(ns);
            clauses.push(format!("namespace = $T{}", texts.len()));
        }
        if let Some(name) = &filter.name {
            texts.push(name);
            clauses.push(format!("name = $T{}", texts.len()));
        }
        if let Some(initiator) = &filter.initiator {
            texts.push(initiator);
            clauses.push(format!("initiator = $T{}", texts.len()));
        }
        if !filter.states.is_empty() {
            let mut list = Vec::new();
            for s in &filter.states {
                texts.push(s);
                list.push(format!("$T{}", texts.len()));
            }
            clauses.push(format!("state IN ({})", list.join(",")));
        }
        for tag in &filter.tags {
            texts.push(tag);
            clauses.push(format!(
                "task_uuid IN (SELECT task_uuid FROM task_tags WHERE tag = $T{})",
                texts.len()
            ));
        }
        if let Some(from) = filter.created_from {
            ints.push(from);
            clauses.push(format!("created_at >= $I{}", ints.len()));
        }
        if let Some(to) = filter.created_to {
            ints.push(to);
            clauses.push(format!("created_at < $I{}", ints.len()));
        }
        let filter_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", clauses.join(" AND "))
        };
        let number = |sql: String, extra_ints: usize| -> String {
            // Texts are $1..$t, integers follow.
            let t = texts.len();
            let mut out = sql;
            for i in (1..=ints.len() + extra_ints).rev() {
                out = out.replace(&format!("$I{i}"), &format!("${}", t + i));
            }
            for i in (1..=t).rev() {
                out = out.replace(&format!("$T{i}"), &format!("${i}"));
            }
            out
        };
        let count_sql = number(format!("SELECT COUNT(*) AS n FROM tasks{filter_sql}"), 0);
        let mut count = sqlx::query(sqlx::AssertSqlSafe(count_sql));
        for t in &texts {
            count = count.bind(*t);
        }
        for i in &ints {
            count = count.bind(*i);
        }
        let total: i64 = count.fetch_one(&self.pool).await?.try_get("n")?;
        let (column, ascending) = filter.sort;
        let direction = if ascending { "ASC" } else { "DESC" };
        let page_sql = number(
            format!(
                "SELECT {TASK_COLUMNS} FROM tasks{filter_sql} ORDER BY {column} {direction}, task_uuid {direction} LIMIT $I{} OFFSET $I{}",
                ints.len() + 1,
                ints.len() + 2
            ),
            2,
        );
        let mut page = sqlx::query(sqlx::AssertSqlSafe(page_sql));
        for t in &texts {
            page = page.bind(*t);
        }
        for i in &ints {
            page = page.bind(*i);
        }
        page = page.bind(filter.limit).bind(filter.offset);
        let rows = page.fetch_all(&self.pool).await?;
        Ok((rows.iter().map(task_from_row).collect::<Result<_, _>>()?, total))
    }

    /// Task counts by state (all time).
    pub async fn task_state_counts(&self) -> Result<StateCounts, Error> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM tasks GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }

    /// Step counts by state (all time).
    pub async fn step_state_counts(&self) -> Result<StateCounts, Error> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM steps GROUP BY state")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("state")?, r.try_get("n")?)))
            .collect()
    }

    /// Tasks created at or after `since`: (state, created_at, completed_at,
    /// namespace, name, version, step count) for analytics.
    pub async fn tasks_since(&self, since: i64) -> Result<Vec<TaskStat>, Error> {
        let rows = sqlx::query(
            "SELECT t.namespace, t.name, t.version, t.state, t.created_at, t.completed_at, (SELECT COUNT(*) FROM steps s WHERE s.task_uuid = t.task_uuid) AS steps FROM tasks t WHERE t.created_at >= $1",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(TaskStat {
                    namespace: r.try_get("namespace")?,
                    name: r.try_get("name")?,
                    version: r.try_get("version")?,
                    state: r.try_get("state")?,
                    created_at: r.try_get("created_at")?,
                    completed_at: r.try_get("completed_at")?,
                    steps: r.try_get("steps")?,
                })
            })
            .collect()
    }

    /// Step attempts that ended (a worker result) at or after `since`.
    pub async fn attempts_since(&self, since: i64) -> Result<Vec<AttemptStat>, Error> {
        let rows = sqlx::query(
            "SELECT t.namespace, t.name AS task_name, t.version, s.name AS step_name, a.success, a.execution_time_ms, a.created_at FROM step_transitions a JOIN steps s ON s.step_uuid = a.step_uuid JOIN tasks t ON t.task_uuid = a.task_uuid WHERE a.success IS NOT NULL AND a.created_at >= $1",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let success: i64 = r.try_get("success")?;
                Ok(AttemptStat {
                    namespace: r.try_get("namespace")?,
                    task_name: r.try_get("task_name")?,
                    version: r.try_get("version")?,
                    step_name: r.try_get("step_name")?,
                    success: success != 0,
                    execution_time_ms: r.try_get::<Option<i64>, _>("execution_time_ms")?.unwrap_or(0),
                    at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// DLQ entries, newest first, optionally of one status.
    pub async fn dlq_entries(&self, status: Option<&str>, limit: i64, offset: i64) -> Result<Vec<DlqRow>, Error> {
        let rows = match status {
            Some(status) => {
                sqlx::query(concat!(
                    "SELECT dlq_entry_uuid, task_uuid, original_state, reason, resolution_status, resolution_at, resolution_notes, resolved_by, task_snapshot, metadata, created_at, updated_at",
                    " FROM dlq_entries WHERE resolution_status = $1 ORDER BY created_at DESC, dlq_entry_uuid LIMIT $2 OFFSET $3"
                ))
                .bind(status)
                .bind(limit)
                .bind(offset)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(concat!(
                    "SELECT dlq_entry_uuid, task_uuid, original_state, reason, resolution_status, resolution_at, resolution_notes, resolved_by, task_snapshot, metadata, created_at, updated_at",
                    " FROM dlq_entries ORDER BY created_at DESC, dlq_entry_uuid LIMIT $1 OFFSET $2"
                ))
                .bind(limit)
                .bind(offset)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(dlq_from_row).collect()
    }

    /// The most recent DLQ entry of a task.
    pub async fn dlq_for_task(&self, task_uuid: &str) -> Result<Option<DlqRow>, Error> {
        let row = sqlx::query(concat!(
            "SELECT dlq_entry_uuid, task_uuid, original_state, reason, resolution_status, resolution_at, resolution_notes, resolved_by, task_snapshot, metadata, created_at, updated_at",
            " FROM dlq_entries WHERE task_uuid = $1 ORDER BY created_at DESC LIMIT 1"
        ))
        .bind(task_uuid)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(dlq_from_row).transpose()
    }

    /// Task uuids with a pending DLQ entry.
    pub async fn pending_dlq_tasks(&self) -> Result<Vec<String>, Error> {
        let rows = sqlx::query("SELECT task_uuid FROM dlq_entries WHERE resolution_status = 'pending'")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| r.try_get("task_uuid")).collect()
    }

    /// The task an entry is about.
    pub async fn dlq_task(&self, dlq_entry_uuid: &str) -> Result<Option<String>, Error> {
        let row = sqlx::query("SELECT task_uuid FROM dlq_entries WHERE dlq_entry_uuid = $1")
            .bind(dlq_entry_uuid)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| r.try_get("task_uuid")).transpose()
    }

    /// Every DLQ entry (for stats; the DLQ is small by design).
    pub async fn all_dlq(&self) -> Result<Vec<DlqRow>, Error> {
        self.dlq_entries(None, i64::MAX / 2, 0).await
    }
}

/// A task, as analytics see it.
#[derive(Debug, Clone)]
pub struct TaskStat {
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub state: String,
    pub created_at: i64,
    pub completed_at: Option<i64>,
    pub steps: i64,
}

/// One ended attempt, as analytics see it.
#[derive(Debug, Clone)]
pub struct AttemptStat {
    pub namespace: String,
    pub task_name: String,
    pub version: String,
    pub step_name: String,
    pub success: bool,
    pub execution_time_ms: i64,
    pub at: i64,
}
