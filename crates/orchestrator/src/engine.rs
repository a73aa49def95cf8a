//! The engine: the one writer of task and step state.
//!
//! Every change arrives as a [`Command`] on one bounded channel. The engine
//! takes whatever has queued (up to `max_batch` commands), applies it in
//! memory (each state change checked by [`crate::state`]), adds what timers
//! made due (expired leases, retries, staleness), hands ready steps to
//! workers with free capacity, and writes the whole round in one transaction
//! (group commit). Only then does anything leave the engine: answers to
//! callers, result acks and assignments to workers, and events to
//! StreamTaskStatus subscribers. A crash before the commit loses nothing
//! anyone was told about; on start the engine reloads every unfinished task
//! and fails the attempts that were in flight (they are retried).

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet, VecDeque},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use cairn_proto::cairn::orchestrator::v1::{self as wpb, connect_response};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use uuid::Uuid;

use crate::{
    metrics::EngineMetrics,
    state::{self, StepState, TaskState, step_done, step_in_flight, task_name, task_route, task_terminal},
    store::{
        self, Batch, DlqRow, DlqUpdate, NewTask, StepRow, StepTransition, Store, TaskRow, TaskTransition, TemplateRow,
    },
    template::{Identity, Template},
};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    cairn_client::names::now_ms()
}

/// What the engine is told to do.
pub enum Command {
    Create(Box<CreateSpec>, oneshot::Sender<Result<Snapshot, Status>>),
    Cancel {
        task: String,
        reason: String,
        reply: oneshot::Sender<Result<CancelOutcome, Status>>,
    },
    Resolve(Box<ResolveSpec>, oneshot::Sender<Result<Snapshot, Status>>),
    /// An investigation update of a DLQ entry; its verdict settles a task
    /// held in BLOCKED_BY_FAILURES (permanently failed → ERROR, manually
    /// resolved → RESOLVED_MANUALLY). NOT_FOUND for an unknown entry.
    Investigate(Box<DlqUpdate>, oneshot::Sender<Result<(), Status>>),
    /// Register templates (a worker's hello or the templates directory).
    Register {
        templates: Vec<Template>,
        reply: oneshot::Sender<Result<Vec<String>, Status>>,
    },
    Join(Box<WorkerJoin>),
    Started {
        session: u64,
        assignment: String,
    },
    Heartbeat {
        session: u64,
        assignments: Vec<String>,
    },
    Result {
        session: u64,
        result: wpb::StepResult,
    },
    Drain {
        session: u64,
    },
    Leave {
        session: u64,
    },
}

/// A CreateTask the API checked for shape.
#[derive(Debug, Clone)]
pub struct CreateSpec {
    pub namespace: String,
    pub name: String,
    pub version: String,
    pub context: Value,
    pub initiator: String,
    pub source_system: String,
    pub reason: String,
    pub priority: Option<i64>,
    pub tags: Vec<String>,
    pub correlation_id: String,
    pub parent_correlation_id: Option<String>,
    pub idempotency_key: Option<String>,
}

/// A manual action on a failed step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    ResetForRetry,
    ResolveManually,
    CompleteManually,
}

#[derive(Debug, Clone)]
pub struct ResolveSpec {
    pub task: String,
    pub step: String,
    pub action: Action,
    pub performed_by: String,
    pub reason: String,
    pub result: Option<Value>,
}

/// A new database id: a UUIDv7, so rows created together sit together in
/// every index keyed by id (a random v4 dirties a random index page per
/// insert; at thousands of inserts per commit that is most of the commit).
fn new_id() -> String {
    Uuid::now_v7().to_string()
}

/// A task and its steps as committed.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub task: TaskRow,
    pub steps: Vec<StepRow>,
    /// DAG edges as (parent, child) step uuids.
    pub edges: Vec<(String, String)>,
    /// The step an action was about, for ResolveStep.
    pub step: Option<usize>,
}

/// How a cancel went.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    Cancelled(Box<Snapshot>),
    /// Not cancellable (already finished): the reason.
    Refused(String),
}

/// A connected worker, as the Connect handler introduces it.
#[derive(Debug)]
pub struct WorkerJoin {
    pub session: u64,
    pub worker_uuid: String,
    pub name: String,
    pub handlers: Vec<String>,
    pub capacity: usize,
    pub outbound: mpsc::Sender<Result<wpb::ConnectResponse, Status>>,
}

/// One committed change, for StreamTaskStatus.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Task {
        task: String,
        seq: i64,
        state: TaskState,
        reason: String,
        at: i64,
        /// The task's last transition in its commit: the state it rests in
        /// (a task routed through ERROR on its way back to PENDING has not ended).
        settled: bool,
    },
    Step {
        task: String,
        seq: i64,
        step_uuid: String,
        name: String,
        state: StepState,
        attempt: i64,
        at: i64,
    },
}

impl Event {
    pub fn task(&self) -> &str {
        match self {
            Event::Task { task, .. } | Event::Step { task, .. } => task,
        }
    }
    pub fn seq(&self) -> i64 {
        match self {
            Event::Task { seq, .. } | Event::Step { seq, .. } => *seq,
        }
    }
}

/// StreamTaskStatus subscriptions by task: the engine pushes each committed
/// event to the subscribers of its task only. A subscriber that falls
/// behind (its channel full) is dropped; it sees its channel close and
/// catches up from the database.
#[derive(Default)]
pub struct Subscribers {
    by_task: std::sync::Mutex<HashMap<String, Vec<mpsc::Sender<Arc<Event>>>>>,
}

impl Subscribers {
    /// Events of `task` committed from now on.
    pub fn subscribe(&self, task: &str) -> mpsc::Receiver<Arc<Event>> {
        let (tx, rx) = mpsc::channel(256);
        self.lock().entry(task.to_owned()).or_default().push(tx);
        rx
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<mpsc::Sender<Arc<Event>>>>> {
        self.by_task.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops the subscriptions of a finished task (their streams have ended).
    fn forget(&self, task: &str) {
        self.lock().remove(task);
    }

    fn publish(&self, events: Vec<Event>) {
        let mut map = self.lock();
        if map.is_empty() {
            return;
        }
        for event in events {
            let Some(list) = map.get_mut(event.task()) else {
                continue;
            };
            let event = Arc::new(event);
            list.retain(|tx| tx.try_send(event.clone()).is_ok());
            if list.is_empty() {
                let task = event.task().to_owned();
                map.remove(&task);
            }
        }
    }
}

/// The engine's tunables.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub lease: Duration,
    pub heartbeat_interval: Duration,
    /// Most commands applied in one round (one transaction).
    pub max_batch: usize,
    /// Ready steps waiting for a worker past which CreateTask is refused.
    pub max_ready_steps: usize,
    /// A task in one non-terminal state this long gets a STALENESS_TIMEOUT
    /// DLQ entry.
    pub staleness: Duration,
    /// A ready step whose handler no connected worker serves for this long
    /// gets its task a WORKER_UNAVAILABLE DLQ entry.
    pub no_worker_timeout: Duration,
    pub sweep_interval: Duration,
}

/// Handles on the running engine for the API.
#[derive(Clone)]
pub struct EngineHandle {
    pub commands: mpsc::Sender<Command>,
    pub events: Arc<Subscribers>,
    pub ready_steps: Arc<AtomicUsize>,
    pub workers: Arc<AtomicUsize>,
    pub config: EngineConfig,
}

impl EngineHandle {
    /// Sends `command` and waits for its answer; UNAVAILABLE when the engine
    /// is gone (restarting).
    pub async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, Status>>) -> Command) -> Result<T, Status> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| Status::unavailable("the orchestrator engine is stopping"))?;
        rx.await
            .map_err(|_| Status::unavailable("the orchestrator engine stopped before answering; retry"))?
    }
}

struct StepRt {
    row: StepRow,
    /// In a ready queue, waiting for a worker.
    queued: bool,
    /// Since when it waits (assignment latency, missing-worker detection).
    ready_since: i64,
    assignment: Option<String>,
    results: Option<Value>,
}

struct TaskRt {
    row: TaskRow,
    template: Arc<Template>,
    context: Arc<Value>,
    steps: Vec<StepRt>,
    /// Created in the current round (inserted, not updated).
    new: bool,
    /// Last DLQ entry this task got for being stale / missing a worker (one pending per task).
    in_dlq: bool,
}

struct Lease {
    task: String,
    step: usize,
    session: u64,
    attempt: i64,
    deadline: i64,
    /// Past this the attempt fails as timed out (the step's own limit).
    timeout_at: Option<i64>,
    assigned_at: i64,
}

struct WorkerRt {
    uuid: String,
    name: String,
    handlers: Vec<String>,
    capacity: usize,
    in_flight: HashSet<String>,
    outbound: mpsc::Sender<Result<wpb::ConnectResponse, Status>>,
    draining: bool,
    last_seen: i64,
    /// A lease of this worker expired: no new work until it speaks again.
    suspect: bool,
}

type Reply = Box<dyn FnOnce() + Send>;
type SnapshotReply = oneshot::Sender<Result<Snapshot, Status>>;

/// What one round changes, and what it sends once committed.
#[derive(Default)]
struct Round {
    now: i64,
    batch: Batch,
    dirty_tasks: HashSet<String>,
    dirty_steps: HashSet<(String, usize)>,
    replies: Vec<Reply>,
    outbound: Vec<(u64, wpb::ConnectResponse)>,
    events: Vec<Event>,
    finished: Vec<String>,
    /// Answers that need the committed rows: (task, step index, reply).
    snapshots: Vec<(String, Option<usize>, SnapshotReply)>,
    cancels: Vec<(String, oneshot::Sender<Result<CancelOutcome, Status>>)>,
    identities: HashSet<String>,
}

impl Round {
    /// Whether all the round changed is attempts that workers started: no
    /// one waits on those, so they may ride along with the next commit
    /// instead of costing an fsync of their own.
    fn only_progress(&self) -> bool {
        self.replies.is_empty()
            && self.outbound.is_empty()
            && self.finished.is_empty()
            && self.snapshots.is_empty()
            && self.cancels.is_empty()
            && self.batch.templates.is_empty()
            && self.batch.new_tasks.is_empty()
            && self.batch.task_transitions.is_empty()
            && self.batch.dlq.is_empty()
            && self.batch.dlq_updates.is_empty()
            && !self.batch.step_transitions.is_empty()
            && self
                .batch
                .step_transitions
                .iter()
                .all(|t| t.to_state == state::step_name(StepState::InProgress))
    }
}

/// Longest a round holding only started attempts waits for the next commit.
/// Losing it in a crash loses nothing anyone was told: recovery fails and
/// retries every attempt in flight, started or not.
const PROGRESS_LINGER_MS: i64 = 20;

/// Details recorded with a step transition.
#[derive(Default)]
struct StepNote {
    reason: String,
    worker: Option<String>,
    performed_by: Option<String>,
    success: Option<bool>,
    execution_time_ms: Option<i64>,
    result: Option<String>,
}

fn note(reason: impl Into<String>) -> StepNote {
    StepNote {
        reason: reason.into(),
        ..StepNote::default()
    }
}

fn move_task(t: &mut TaskRt, round: &mut Round, to: TaskState, reason: &str) -> bool {
    let from = state::parse_task(&t.row.state);
    if !state::task_allowed(from, to) {
        debug_assert!(false, "illegal task transition {from:?} -> {to:?} ({reason})");
        tracing::error!(task = %t.row.task_uuid, ?from, ?to, reason, "illegal task transition refused");
        return false;
    }
    t.row.seq += 1;
    t.row.state = task_name(to).to_owned();
    t.row.updated_at = round.now;
    t.row.state_since = round.now;
    t.row.completed_at = if task_terminal(to) { Some(round.now) } else { None };
    round.batch.task_transitions.push(TaskTransition {
        transition_uuid: new_id(),
        task_uuid: t.row.task_uuid.clone(),
        seq: t.row.seq,
        from_state: Some(task_name(from).to_owned()),
        to_state: task_name(to).to_owned(),
        reason: reason.to_owned(),
        created_at: round.now,
    });
    round.events.push(Event::Task {
        task: t.row.task_uuid.clone(),
        seq: t.row.seq,
        state: to,
        reason: reason.to_owned(),
        at: round.now,
        settled: false,
    });
    round.dirty_tasks.insert(t.row.task_uuid.clone());
    true
}

/// Moves the task along the shortest legal route to `to`.
fn route_task(t: &mut TaskRt, round: &mut Round, to: TaskState, reason: &str) {
    let from = state::parse_task(&t.row.state);
    match task_route(from, to) {
        Some(path) => {
            for next in path {
                move_task(t, round, next, reason);
            }
        }
        None => {
            debug_assert!(false, "no legal route {from:?} -> {to:?}");
            tracing::error!(task = %t.row.task_uuid, ?from, ?to, "no legal route between task states");
        }
    }
}

fn move_step(t: &mut TaskRt, i: usize, round: &mut Round, to: StepState, n: StepNote) -> bool {
    let step = &mut t.steps[i];
    let from = state::parse_step(&step.row.state);
    if !state::step_allowed(from, to) {
        debug_assert!(false, "illegal step transition {from:?} -> {to:?} ({})", n.reason);
        tracing::error!(step = %step.row.step_uuid, ?from, ?to, reason = %n.reason, "illegal step transition refused");
        return false;
    }
    t.row.seq += 1;
    step.row.state = state::step_name(to).to_owned();
    step.row.updated_at = round.now;
    if step_done(to) {
        step.row.completed_at = Some(round.now);
    }
    let transition_uuid = new_id();
    round.batch.step_transitions.push(StepTransition {
        audit_uuid: new_id(),
        transition_uuid,
        step_uuid: step.row.step_uuid.clone(),
        task_uuid: t.row.task_uuid.clone(),
        seq: t.row.seq,
        from_state: Some(state::step_name(from).to_owned()),
        to_state: state::step_name(to).to_owned(),
        reason: n.reason,
        attempt: step.row.attempts,
        worker_uuid: n.worker,
        performed_by: n.performed_by,
        success: n.success,
        execution_time_ms: n.execution_time_ms,
        result: n.result,
        created_at: round.now,
    });
    round.events.push(Event::Step {
        task: t.row.task_uuid.clone(),
        seq: t.row.seq,
        step_uuid: step.row.step_uuid.clone(),
        name: step.row.name.clone(),
        state: to,
        attempt: step.row.attempts,
        at: round.now,
    });
    t.row.updated_at = round.now;
    round.dirty_tasks.insert(t.row.task_uuid.clone());
    round.dirty_steps.insert((t.row.task_uuid.clone(), i));
    true
}

fn step_state(t: &TaskRt, i: usize) -> StepState {
    state::parse_step(&t.steps[i].row.state)
}

fn edges(t: &TaskRt) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (c, step) in t.template.steps.iter().enumerate() {
        for &p in &step.parents {
            out.push((t.steps[p].row.step_uuid.clone(), t.steps[c].row.step_uuid.clone()));
        }
    }
    out
}

fn snapshot(t: &TaskRt, step: Option<usize>) -> Snapshot {
    Snapshot {
        task: t.row.clone(),
        steps: t.steps.iter().map(|s| s.row.clone()).collect(),
        edges: edges(t),
        step,
    }
}

fn identity_hash(spec: &CreateSpec, identity: Identity) -> Option<String> {
    let mut hasher = Sha256::new();
    for part in [&spec.namespace, &spec.name, &spec.version] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    match (&spec.idempotency_key, identity) {
        (Some(key), _) => {
            hasher.update(b"key\0");
            hasher.update(key.as_bytes());
        }
        (None, Identity::Strict) => {
            hasher.update(b"context\0");
            // serde_json maps are ordered (BTreeMap), so equal contexts encode equally.
            hasher.update(spec.context.to_string().as_bytes());
        }
        (None, Identity::CallerProvided | Identity::AlwaysUnique) => return None,
    }
    Some(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn template_key(namespace: &str, name: &str, version: &str) -> String {
    format!("{namespace}/{name}@{version}")
}

/// The engine's state; see the module docs.
pub struct Engine {
    store: Store,
    config: EngineConfig,
    metrics: EngineMetrics,
    templates: HashMap<String, Arc<Template>>,
    tasks: HashMap<String, TaskRt>,
    identities: HashMap<String, String>,
    ready: HashMap<String, VecDeque<(String, usize)>>,
    ready_len: usize,
    leases: HashMap<String, Lease>,
    lease_heap: BinaryHeap<Reverse<(i64, String)>>,
    retries: BinaryHeap<Reverse<(i64, String, usize)>>,
    workers: HashMap<u64, WorkerRt>,
    events: Arc<Subscribers>,
    ready_gauge: Arc<AtomicUsize>,
    workers_gauge: Arc<AtomicUsize>,
    next_sweep: i64,
}

impl Engine {
    /// Loads templates and unfinished tasks; the engine and its handle.
    pub async fn start(
        store: Store,
        config: EngineConfig,
        metrics: EngineMetrics,
    ) -> anyhow::Result<(Engine, EngineHandle, mpsc::Receiver<Command>)> {
        let (commands, rx) = mpsc::channel(config.max_batch.max(1024) * 4);
        let events = Arc::new(Subscribers::default());
        let mut engine = Engine {
            store,
            config: config.clone(),
            metrics,
            templates: HashMap::new(),
            tasks: HashMap::new(),
            identities: HashMap::new(),
            ready: HashMap::new(),
            ready_len: 0,
            leases: HashMap::new(),
            lease_heap: BinaryHeap::new(),
            retries: BinaryHeap::new(),
            workers: HashMap::new(),
            events: events.clone(),
            ready_gauge: Arc::new(AtomicUsize::new(0)),
            workers_gauge: Arc::new(AtomicUsize::new(0)),
            next_sweep: 0,
        };
        engine.recover().await?;
        let handle = EngineHandle {
            commands,
            events,
            ready_steps: engine.ready_gauge.clone(),
            workers: engine.workers_gauge.clone(),
            config,
        };
        Ok((engine, handle, rx))
    }

    async fn load_task(&self, row: TaskRow) -> anyhow::Result<Option<TaskRt>> {
        let key = template_key(&row.namespace, &row.name, &row.version);
        let Some(template) = self.templates.get(&key).cloned() else {
            tracing::error!(task = %row.task_uuid, template = %key, "task of an unknown template is left as it is");
            return Ok(None);
        };
        let steps = self.store.steps(&row.task_uuid).await?;
        let context: Value = serde_json::from_str(&row.context).unwrap_or_else(|_| json!({}));
        let steps = steps
            .into_iter()
            .map(|row| StepRt {
                results: row.results.as_deref().and_then(|r| serde_json::from_str(r).ok()),
                row,
                queued: false,
                ready_since: 0,
                assignment: None,
            })
            .collect();
        Ok(Some(TaskRt {
            row,
            template,
            context: Arc::new(context),
            steps,
            new: false,
            in_dlq: false,
        }))
    }

    /// Rebuilds memory from the database and settles what a crash left.
    async fn recover(&mut self) -> anyhow::Result<()> {
        for row in self.store.templates().await.context("loading templates")? {
            match Template::from_yaml(&row.source) {
                Ok(t) => {
                    self.templates
                        .insert(template_key(&row.namespace, &row.name, &row.version), Arc::new(t));
                }
                Err(error) => {
                    tracing::error!(%error, namespace = %row.namespace, name = %row.name, "stored template no longer parses")
                }
            }
        }
        let in_dlq: HashSet<String> = self.store.pending_dlq_tasks().await?.into_iter().collect();
        let mut round = Round {
            now: now_ms(),
            ..Round::default()
        };
        let rows = self.store.active_tasks().await.context("loading unfinished tasks")?;
        let count = rows.len();
        for row in rows {
            let uuid = row.task_uuid.clone();
            let Some(mut t) = self.load_task(row).await? else {
                continue;
            };
            t.in_dlq = in_dlq.contains(&uuid);
            if let Some(hash) = &t.row.identity_hash {
                self.identities.insert(hash.clone(), uuid.clone());
            }
            for i in 0..t.steps.len() {
                match step_state(&t, i) {
                    StepState::Enqueued | StepState::InProgress => {
                        if step_state(&t, i) == StepState::Enqueued {
                            // Not started as far as we know; the attempt still counts.
                        }
                        move_step(
                            &mut t,
                            i,
                            &mut round,
                            StepState::EnqueuedAsErrorForOrchestration,
                            StepNote {
                                success: Some(false),
                                ..note("the orchestrator restarted while the attempt was in flight")
                            },
                        );
                        self.settle_failure(&mut t, i, &mut round, true, Some(0), "worker_unavailable");
                    }
                    StepState::EnqueuedForOrchestration => {
                        move_step(&mut t, i, &mut round, StepState::Complete, note("result recovered"));
                    }
                    StepState::EnqueuedAsErrorForOrchestration => {
                        self.settle_failure(&mut t, i, &mut round, true, Some(0), "worker_unavailable");
                    }
                    StepState::WaitingForRetry => {
                        let due = t.steps[i].row.next_retry_at.unwrap_or(round.now);
                        self.retries.push(Reverse((due, uuid.clone(), i)));
                    }
                    _ => {}
                }
            }
            self.tasks.insert(uuid.clone(), t);
            self.evaluate(&uuid, &mut round, "recovered after restart");
        }
        self.dispatch(&mut round);
        self.commit(round).await?;
        tracing::info!(tasks = count, templates = self.templates.len(), "engine recovered");
        Ok(())
    }

    /// Runs rounds until every command sender is gone or `stop` fires.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        stop: cairn_service::CancellationToken,
    ) -> anyhow::Result<()> {
        let mut commands = Vec::with_capacity(self.config.max_batch);
        // A round of started attempts waiting to ride along, and until when.
        let mut carried: Option<(Round, i64)> = None;
        loop {
            let mut wake = self.next_wake();
            if let Some((_, until)) = &carried {
                wake = wake.min(*until);
            }
            let sleep = Duration::from_millis(u64::try_from(wake - now_ms()).unwrap_or(0));
            let stopping = tokio::select! {
                biased;
                () = stop.cancelled() => true,
                n = rx.recv_many(&mut commands, self.config.max_batch) => n == 0,
                () = tokio::time::sleep(sleep) => false,
            };
            if stopping {
                if let Some((round, _)) = carried {
                    self.commit(round).await?;
                }
                return Ok(());
            }
            let (mut round, until) = match carried.take() {
                Some((mut round, until)) => {
                    round.now = now_ms();
                    (round, Some(until))
                }
                None => (
                    Round {
                        now: now_ms(),
                        ..Round::default()
                    },
                    None,
                ),
            };
            let mut creates = Vec::new();
            for command in commands.drain(..) {
                match command {
                    Command::Create(spec, reply) => creates.push((*spec, reply)),
                    other => self.apply(other, &mut round).await,
                }
            }
            if !creates.is_empty() {
                self.create_all(creates, &mut round).await;
            }
            self.expire_leases(&mut round);
            self.due_retries(&mut round);
            if round.now >= self.next_sweep {
                self.sweep(&mut round);
                self.next_sweep = round.now + i64::try_from(self.config.sweep_interval.as_millis()).unwrap_or(1000);
            }
            self.dispatch(&mut round);
            if round.only_progress() && until.is_none_or(|until| round.now < until) {
                let until = until.unwrap_or(round.now + PROGRESS_LINGER_MS);
                carried = Some((round, until));
                continue;
            }
            self.commit(round).await?;
        }
    }

    fn next_wake(&self) -> i64 {
        let mut wake = self.next_sweep;
        if let Some(Reverse((at, _))) = self.lease_heap.peek() {
            wake = wake.min(*at);
        }
        if let Some(Reverse((at, _, _))) = self.retries.peek() {
            wake = wake.min(*at);
        }
        wake
    }

    /// Writes the round, then lets its effects out.
    async fn commit(&mut self, mut round: Round) -> anyhow::Result<()> {
        let mut batch = std::mem::take(&mut round.batch);
        let mut new_uuids = Vec::new();
        for uuid in &round.dirty_tasks {
            if let Some(t) = self.tasks.get_mut(uuid) {
                if t.new {
                    t.new = false;
                    new_uuids.push(uuid.clone());
                } else {
                    batch.tasks.push(t.row.clone());
                }
            }
        }
        for uuid in &new_uuids {
            if let Some(t) = self.tasks.get(uuid) {
                batch.new_tasks.push(NewTask {
                    task: t.row.clone(),
                    steps: t.steps.iter().map(|s| s.row.clone()).collect(),
                    edges: edges(t),
                });
            }
        }
        let new: HashSet<&String> = new_uuids.iter().collect();
        for (uuid, i) in &round.dirty_steps {
            if new.contains(uuid) {
                continue;
            }
            if let Some(t) = self.tasks.get(uuid) {
                batch.steps.push(t.steps[*i].row.clone());
            }
        }
        if !batch.is_empty() {
            let started = std::time::Instant::now();
            let transitions = batch.task_transitions.len() + batch.step_transitions.len();
            self.store
                .commit(&batch)
                .await
                .context("committing a round of state changes")?;
            self.metrics.observe_commit(started.elapsed(), transitions);
            for t in &batch.task_transitions {
                self.metrics.task_transition(&t.to_state);
            }
            for t in &batch.step_transitions {
                self.metrics.step_transition(&t.to_state);
            }
            for d in &batch.dlq {
                self.metrics.dlq_entry(&d.reason);
            }
        }
        for reply in round.replies {
            reply();
        }
        for (uuid, step, reply) in round.snapshots {
            let answer = self
                .tasks
                .get(&uuid)
                .map(|t| snapshot(t, step))
                .ok_or_else(|| Status::internal("task vanished before its answer"));
            let _ = reply.send(answer);
        }
        for (uuid, reply) in round.cancels {
            if let Some(t) = self.tasks.get(&uuid) {
                let _ = reply.send(Ok(CancelOutcome::Cancelled(Box::new(snapshot(t, None)))));
            }
        }
        for (session, message) in round.outbound {
            if let Some(w) = self.workers.get(&session) {
                // Never blocks: the channel holds more than the worker's
                // capacity; a worker that stopped reading is let go.
                if w.outbound.try_send(Ok(message)).is_err() {
                    tracing::warn!(worker = %w.name, "worker is not reading its stream; letting it go");
                }
            }
        }
        if !round.events.is_empty() {
            let mut seen = HashSet::new();
            for event in round.events.iter_mut().rev() {
                if let Event::Task { task, settled, .. } = event {
                    *settled = seen.insert(task.clone());
                }
            }
            self.events.publish(round.events);
        }
        for uuid in round.finished {
            let ended = self
                .tasks
                .get(&uuid)
                .is_some_and(|t| task_terminal(state::parse_task(&t.row.state)));
            if !ended {
                continue;
            }
            self.events.forget(&uuid);
            if let Some(t) = self.tasks.remove(&uuid)
                && let Some(hash) = &t.row.identity_hash
            {
                self.identities.remove(hash);
            }
        }
        self.ready_gauge.store(self.ready_len, Ordering::Relaxed);
        self.workers_gauge.store(self.workers.len(), Ordering::Relaxed);
        self.metrics.set_gauges(
            self.ready_len,
            self.workers.len(),
            self.workers.values().map(|w| w.capacity).sum(),
            self.leases.len(),
            self.tasks.values().map(|t| t.row.state.as_str()),
            self.tasks
                .values()
                .flat_map(|t| t.steps.iter().map(|s| s.row.state.as_str())),
        );
        Ok(())
    }

    async fn apply(&mut self, command: Command, round: &mut Round) {
        match command {
            Command::Create(spec, reply) => self.create_all(vec![(*spec, reply)], round).await,
            Command::Cancel { task, reason, reply } => self.cancel(task, &reason, reply, round).await,
            Command::Resolve(spec, reply) => self.resolve(*spec, reply, round).await,
            Command::Investigate(update, reply) => self.investigate(*update, reply, round).await,
            Command::Register { templates, reply } => {
                let answer = self.register(templates, round);
                round.replies.push(Box::new(move || {
                    let _ = reply.send(answer);
                }));
            }
            Command::Join(join) => {
                tracing::info!(worker = %join.name, handlers = ?join.handlers, capacity = join.capacity, "worker connected");
                self.workers.insert(
                    join.session,
                    WorkerRt {
                        uuid: join.worker_uuid,
                        name: join.name,
                        handlers: join.handlers,
                        capacity: join.capacity,
                        in_flight: HashSet::new(),
                        outbound: join.outbound,
                        draining: false,
                        last_seen: round.now,
                        suspect: false,
                    },
                );
            }
            Command::Started { session, assignment } => {
                self.seen(session, round.now);
                if let Some((task, i)) = self.lease_of(session, &assignment)
                    && let Some(t) = self.tasks.get_mut(&task)
                    && step_state(t, i) == StepState::Enqueued
                {
                    let worker = self.workers.get(&session).map(|w| w.uuid.clone());
                    move_step(
                        t,
                        i,
                        round,
                        StepState::InProgress,
                        StepNote {
                            worker,
                            ..note("worker started the attempt")
                        },
                    );
                }
            }
            Command::Heartbeat { session, assignments } => {
                self.seen(session, round.now);
                let lease = i64::try_from(self.config.lease.as_millis()).unwrap_or(30_000);
                for id in assignments {
                    if let Some(l) = self.leases.get_mut(&id)
                        && l.session == session
                    {
                        let mut deadline = round.now + lease;
                        if let Some(limit) = l.timeout_at {
                            deadline = deadline.min(limit);
                        }
                        if deadline > l.deadline {
                            l.deadline = deadline;
                            self.lease_heap.push(Reverse((deadline, id)));
                        }
                    }
                }
            }
            Command::Result { session, result } => self.result(session, result, round),
            Command::Drain { session } => {
                if let Some(w) = self.workers.get_mut(&session) {
                    tracing::info!(worker = %w.name, in_flight = w.in_flight.len(), "worker draining");
                    w.draining = true;
                }
            }
            Command::Leave { session } => {
                if let Some(w) = self.workers.remove(&session) {
                    tracing::info!(worker = %w.name, in_flight = w.in_flight.len(), "worker disconnected");
                    for id in w.in_flight {
                        self.fail_attempt(&id, round, "the worker disconnected", "worker_unavailable", Some(0));
                    }
                }
            }
        }
    }

    fn seen(&mut self, session: u64, now: i64) {
        if let Some(w) = self.workers.get_mut(&session) {
            w.last_seen = now;
            w.suspect = false;
        }
    }

    fn lease_of(&self, session: u64, assignment: &str) -> Option<(String, usize)> {
        self.leases
            .get(assignment)
            .filter(|l| l.session == session)
            .map(|l| (l.task.clone(), l.step))
    }

    fn register(&mut self, templates: Vec<Template>, round: &mut Round) -> Result<Vec<String>, Status> {
        let mut out = Vec::new();
        let mut fresh = Vec::new();
        for t in templates {
            let key = template_key(&t.namespace, &t.name, &t.version.to_string());
            if let Some(existing) = self.templates.get(&key) {
                if existing.source.trim() != t.source.trim() {
                    return Err(Status::already_exists(format!(
                        "template {key} is already registered with a different body; a version never changes: register a new version"
                    )));
                }
            } else if !fresh.iter().any(|(k, _): &(String, Template)| k == &key) {
                fresh.push((key.clone(), t));
            }
            out.push(key);
        }
        for (key, t) in fresh {
            round.batch.templates.push(TemplateRow {
                namespace: t.namespace.clone(),
                name: t.name.clone(),
                version: t.version.to_string(),
                description: t.description.clone(),
                source: t.source.clone(),
                step_count: i64::try_from(t.steps.len()).unwrap_or(i64::MAX),
                registered_at: round.now,
            });
            tracing::info!(template = %key, "template registered");
            self.templates.insert(key, Arc::new(t));
        }
        Ok(out)
    }

    /// Creates a round's tasks: one database query for the identities not
    /// known in memory, then each create.
    async fn create_all(
        &mut self,
        creates: Vec<(CreateSpec, oneshot::Sender<Result<Snapshot, Status>>)>,
        round: &mut Round,
    ) {
        let hashes: Vec<String> = creates
            .iter()
            .filter_map(|(spec, _)| {
                let key = template_key(&spec.namespace, &spec.name, &spec.version);
                let template = self.templates.get(&key)?;
                identity_hash(spec, template.identity)
            })
            .filter(|h| !self.identities.contains_key(h))
            .collect();
        let found = if hashes.is_empty() {
            HashMap::new()
        } else {
            let refs: Vec<&str> = hashes.iter().map(String::as_str).collect();
            match self.store.tasks_by_identities(&refs).await {
                Ok(found) => found,
                Err(error) => {
                    tracing::error!(%error, "checking task identities");
                    for (_, reply) in creates {
                        let _ = reply.send(Err(Status::internal("Internal server error")));
                    }
                    return;
                }
            }
        };
        for (spec, reply) in creates {
            self.create(spec, reply, round, &found);
        }
    }

    fn create(
        &mut self,
        spec: CreateSpec,
        reply: oneshot::Sender<Result<Snapshot, Status>>,
        round: &mut Round,
        found: &HashMap<String, String>,
    ) {
        let refuse = |round: &mut Round, reply: oneshot::Sender<Result<Snapshot, Status>>, status: Status| {
            round.replies.push(Box::new(move || {
                let _ = reply.send(Err(status));
            }));
        };
        let key = template_key(&spec.namespace, &spec.name, &spec.version);
        let Some(template) = self.templates.get(&key).cloned() else {
            return refuse(
                round,
                reply,
                Status::invalid_argument(format!("template not found: {key}")),
            );
        };
        if let Some(schema) = &template.input_schema
            && let Err(v) = crate::schema::validate(schema, &spec.context, "context")
        {
            return refuse(
                round,
                reply,
                Status::invalid_argument(format!("{} {} (input_schema of {key})", v.path, v.reason)),
            );
        }
        let hash = identity_hash(&spec, template.identity);
        if let Some(hash) = &hash {
            let existing = match self.identities.get(hash) {
                Some(uuid) => Some(uuid.clone()),
                None if round.identities.contains(hash) => Some("(created in the same instant)".into()),
                None => found.get(hash).cloned(),
            };
            if let Some(existing) = existing {
                return refuse(
                    round,
                    reply,
                    Status::already_exists(format!("A task with this identity already exists: {existing}")),
                );
            }
            round.identities.insert(hash.clone());
        }
        let task_uuid = new_id();
        let now = round.now;
        let steps: Vec<StepRt> = template
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| StepRt {
                row: StepRow {
                    step_uuid: new_id(),
                    task_uuid: task_uuid.clone(),
                    idx: i64::try_from(i).unwrap_or(0),
                    name: s.name.clone(),
                    handler: s.handler.clone(),
                    state: state::step_name(StepState::Pending).to_owned(),
                    attempts: 0,
                    max_attempts: i64::from(s.retry.max_attempts),
                    retryable: s.retry.retryable,
                    total_parents: i64::try_from(s.parents.len()).unwrap_or(0),
                    created_at: now,
                    updated_at: now,
                    completed_at: None,
                    last_attempted_at: None,
                    last_failure_at: None,
                    next_retry_at: None,
                    backoff_request_ms: None,
                    results: None,
                    error: None,
                },
                queued: false,
                ready_since: 0,
                assignment: None,
                results: None,
            })
            .collect();
        let mut t = TaskRt {
            row: TaskRow {
                task_uuid: task_uuid.clone(),
                namespace: spec.namespace,
                name: spec.name,
                version: spec.version,
                state: task_name(TaskState::Pending).to_owned(),
                context: spec.context.to_string(),
                initiator: spec.initiator,
                source_system: spec.source_system,
                reason: spec.reason,
                priority: spec.priority,
                tags: spec.tags,
                correlation_id: spec.correlation_id,
                parent_correlation_id: spec.parent_correlation_id,
                identity_hash: hash.clone(),
                created_at: now,
                updated_at: now,
                completed_at: None,
                state_since: now,
                seq: 0,
            },
            template,
            context: Arc::new(spec.context),
            steps,
            new: true,
            in_dlq: false,
        };
        // The first row: created as PENDING.
        t.row.seq = 1;
        round.batch.task_transitions.push(TaskTransition {
            transition_uuid: new_id(),
            task_uuid: task_uuid.clone(),
            seq: 1,
            from_state: None,
            to_state: task_name(TaskState::Pending).to_owned(),
            reason: "created".into(),
            created_at: now,
        });
        round.events.push(Event::Task {
            task: task_uuid.clone(),
            seq: 1,
            state: TaskState::Pending,
            reason: "created".into(),
            at: now,
            settled: false,
        });
        for step in &t.steps {
            t.row.seq += 1;
            round.batch.step_transitions.push(StepTransition {
                transition_uuid: new_id(),
                audit_uuid: new_id(),
                step_uuid: step.row.step_uuid.clone(),
                task_uuid: task_uuid.clone(),
                seq: t.row.seq,
                from_state: None,
                to_state: state::step_name(StepState::Pending).to_owned(),
                reason: "created".into(),
                attempt: 0,
                worker_uuid: None,
                performed_by: None,
                success: None,
                execution_time_ms: None,
                result: None,
                created_at: now,
            });
            round.events.push(Event::Step {
                task: task_uuid.clone(),
                seq: t.row.seq,
                step_uuid: step.row.step_uuid.clone(),
                name: step.row.name.clone(),
                state: StepState::Pending,
                attempt: 0,
                at: now,
            });
        }
        round.dirty_tasks.insert(task_uuid.clone());
        move_task(&mut t, round, TaskState::Initializing, "started");
        if let Some(hash) = hash {
            self.identities.insert(hash, task_uuid.clone());
        }
        self.tasks.insert(task_uuid.clone(), t);
        self.evaluate(&task_uuid, round, "initialized");
        round.snapshots.push((task_uuid, None, reply));
    }

    async fn cancel(
        &mut self,
        uuid: String,
        reason: &str,
        reply: oneshot::Sender<Result<CancelOutcome, Status>>,
        round: &mut Round,
    ) {
        let answer = |round: &mut Round, reply: oneshot::Sender<Result<CancelOutcome, Status>>, a| {
            round.replies.push(Box::new(move || {
                let _ = reply.send(a);
            }));
        };
        let Some(t) = self.tasks.get_mut(&uuid) else {
            let a = match self.store.task(&uuid).await {
                Ok(Some(row)) => Ok(CancelOutcome::Refused(format!(
                    "Task cannot be cancelled: it is {}",
                    row.state
                ))),
                Ok(None) => Err(Status::not_found(format!("task not found: {uuid}"))),
                Err(error) => {
                    tracing::error!(%error, "loading a task to cancel");
                    Err(Status::internal("Internal server error"))
                }
            };
            return answer(round, reply, a);
        };
        let st = state::parse_task(&t.row.state);
        if task_terminal(st) {
            let a = Ok(CancelOutcome::Refused(format!(
                "Task cannot be cancelled: it is {}",
                t.row.state
            )));
            return answer(round, reply, a);
        }
        let text = if reason.is_empty() {
            "cancelled".to_owned()
        } else {
            format!("cancelled: {reason}")
        };
        for i in 0..t.steps.len() {
            let s = step_state(t, i);
            if state::step_allowed(s, StepState::Cancelled) {
                if let Some(id) = t.steps[i].assignment.take()
                    && let Some(lease) = self.leases.remove(&id)
                    && let Some(w) = self.workers.get_mut(&lease.session)
                {
                    w.in_flight.remove(&id);
                    round.outbound.push((
                        lease.session,
                        wpb::ConnectResponse {
                            kind: Some(connect_response::Kind::Cancel(wpb::CancelAssignment {
                                assignment_id: id,
                                reason: text.clone(),
                            })),
                        },
                    ));
                }
                t.steps[i].queued = false;
                move_step(t, i, round, StepState::Cancelled, note(text.clone()));
            }
        }
        move_task(t, round, TaskState::Cancelled, &text);
        round.finished.push(uuid.clone());
        round.cancels.push((uuid, reply));
    }

    async fn resolve(
        &mut self,
        spec: ResolveSpec,
        reply: oneshot::Sender<Result<Snapshot, Status>>,
        round: &mut Round,
    ) {
        let refuse = |round: &mut Round, reply: oneshot::Sender<Result<Snapshot, Status>>, status: Status| {
            round.replies.push(Box::new(move || {
                let _ = reply.send(Err(status));
            }));
        };
        if !self.tasks.contains_key(&spec.task) {
            let row = match self.store.task(&spec.task).await {
                Ok(Some(row)) => row,
                Ok(None) => {
                    return refuse(
                        round,
                        reply,
                        Status::not_found(format!("task not found: {}", spec.task)),
                    );
                }
                Err(error) => {
                    tracing::error!(%error, "loading a task to resolve");
                    return refuse(round, reply, Status::internal("Internal server error"));
                }
            };
            match self.load_task(row).await {
                Ok(Some(t)) => {
                    self.tasks.insert(spec.task.clone(), t);
                }
                Ok(None) => {
                    return refuse(
                        round,
                        reply,
                        Status::failed_precondition("the task's template is not registered"),
                    );
                }
                Err(error) => {
                    tracing::error!(error = format!("{error:#}"), "loading a task to resolve");
                    return refuse(round, reply, Status::internal("Internal server error"));
                }
            }
            // Unloaded again after the round unless it runs on.
            round.finished.push(spec.task.clone());
        }
        let Some(t) = self.tasks.get_mut(&spec.task) else {
            return refuse(round, reply, Status::internal("task vanished"));
        };
        let Some(i) = t.steps.iter().position(|s| s.row.step_uuid == spec.step) else {
            return refuse(
                round,
                reply,
                Status::invalid_argument(format!("step {} is not a step of task {}", spec.step, spec.task)),
            );
        };
        let current = step_state(t, i);
        if current != StepState::Error {
            return refuse(
                round,
                reply,
                Status::invalid_argument(format!(
                    "step {} is {}: only a step in error can be resolved",
                    t.steps[i].row.name,
                    state::step_name(current)
                )),
            );
        }
        let task_state = state::parse_task(&t.row.state);
        if task_state == TaskState::Cancelled {
            return refuse(
                round,
                reply,
                Status::invalid_argument("the task was cancelled; its steps cannot be resolved"),
            );
        }
        let who = format!("{} ({})", spec.performed_by, spec.reason);
        let n = StepNote {
            performed_by: Some(spec.performed_by.clone()),
            ..note(match spec.action {
                Action::ResetForRetry => format!("reset for retry by {who}"),
                Action::ResolveManually => format!("resolved manually by {who}"),
                Action::CompleteManually => format!("completed manually by {who}"),
            })
        };
        match spec.action {
            Action::ResetForRetry => {
                t.steps[i].row.attempts = 0;
                t.steps[i].row.next_retry_at = None;
                move_step(t, i, round, StepState::Pending, n);
            }
            Action::ResolveManually => {
                move_step(t, i, round, StepState::ResolvedManually, n);
            }
            Action::CompleteManually => {
                let result = spec.result.unwrap_or_else(|| json!({}));
                t.steps[i].row.results = Some(result.to_string());
                t.steps[i].results = Some(result.clone());
                move_step(
                    t,
                    i,
                    round,
                    StepState::Complete,
                    StepNote {
                        success: Some(true),
                        result: Some(result.to_string()),
                        ..n
                    },
                );
            }
        }
        // A task the failure stopped runs on along the DAG; a held task whose
        // last failed step was resolved without a result, with nothing left
        // to run, is resolved manually as a whole.
        let reason = format!("step {} resolved by {}", t.steps[i].row.name, spec.performed_by);
        let all_done = (0..t.steps.len()).all(|j| step_done(step_state(t, j)));
        if task_state == TaskState::BlockedByFailures && spec.action == Action::ResolveManually && all_done {
            move_task(t, round, TaskState::ResolvedManually, &reason);
            round.finished.push(spec.task.clone());
            round.snapshots.push((spec.task, Some(i), reply));
            return;
        }
        match task_state {
            TaskState::Error => {
                move_task(t, round, TaskState::Pending, &reason);
                move_task(t, round, TaskState::Initializing, &reason);
            }
            TaskState::BlockedByFailures => {
                move_task(t, round, TaskState::Error, &reason);
                move_task(t, round, TaskState::Pending, &reason);
                move_task(t, round, TaskState::Initializing, &reason);
            }
            _ => {}
        }
        self.evaluate(&spec.task, round, &reason);
        round.snapshots.push((spec.task, Some(i), reply));
    }

    /// Applies a DLQ investigation update in the round's commit; a verdict
    /// on a held task ends it in the same commit.
    async fn investigate(&mut self, update: DlqUpdate, reply: oneshot::Sender<Result<(), Status>>, round: &mut Round) {
        let answer = match self.store.dlq_task(&update.dlq_entry_uuid).await {
            Ok(Some(task)) => {
                let verdict = match update.status.as_deref() {
                    Some("permanently_failed") => Some((TaskState::Error, "the investigation gave up")),
                    Some("manually_resolved") => Some((TaskState::ResolvedManually, "resolved by the investigation")),
                    _ => None,
                };
                if let Some(t) = self.tasks.get_mut(&task)
                    && let Some((to, why)) = verdict
                    && state::parse_task(&t.row.state) == TaskState::BlockedByFailures
                {
                    let who = update.resolved_by.as_deref().unwrap_or("an operator");
                    move_task(t, round, to, &format!("{why} ({who})"));
                    round.finished.push(task);
                }
                round.batch.dlq_updates.push(update);
                Ok(())
            }
            Ok(None) => Err(Status::not_found(format!(
                "DLQ entry not found: {}",
                update.dlq_entry_uuid
            ))),
            Err(error) => {
                tracing::error!(%error, "reading a DLQ entry");
                Err(Status::internal("Internal server error"))
            }
        };
        round.replies.push(Box::new(move || {
            let _ = reply.send(answer);
        }));
    }

    /// Decides where a task goes next from its steps' states, queues the
    /// steps that became ready, and records the route.
    fn evaluate(&mut self, uuid: &str, round: &mut Round, reason: &str) {
        let Some(t) = self.tasks.get_mut(uuid) else {
            return;
        };
        let current = state::parse_task(&t.row.state);
        if task_terminal(current) {
            return;
        }
        let n = t.steps.len();
        let done: Vec<bool> = (0..n).map(|i| step_done(step_state(t, i))).collect();
        if done.iter().all(|d| *d) {
            route_task(t, round, TaskState::Complete, "all steps complete");
            round.finished.push(uuid.to_owned());
            return;
        }
        let failed = (0..n).any(|i| step_state(t, i) == StepState::Error);
        let busy = (0..n).any(|i| step_in_flight(step_state(t, i)) || t.steps[i].queued);
        let retrying = (0..n).any(|i| step_state(t, i) == StepState::WaitingForRetry);
        if failed {
            if busy || retrying {
                if current != TaskState::WaitingForDependencies {
                    route_task(
                        t,
                        round,
                        TaskState::WaitingForDependencies,
                        "a step failed; waiting for the others",
                    );
                }
            } else {
                // Held for an operator: ResolveStep lets it run on, the DLQ
                // entry's verdict ends it (ERROR or RESOLVED_MANUALLY).
                route_task(t, round, TaskState::BlockedByFailures, "a step failed permanently");
                let last = (0..n)
                    .filter(|&i| step_state(t, i) == StepState::Error)
                    .filter_map(|i| t.steps[i].row.error.as_deref())
                    .find_map(|e| serde_json::from_str::<Value>(e).ok());
                let dlq_reason = match last.as_ref().and_then(|e| e["error_type"].as_str()) {
                    Some("worker_unavailable") => "worker_unavailable",
                    _ => "max_retries_exceeded",
                };
                if !t.in_dlq {
                    round.batch.dlq.push(dlq_entry(t, dlq_reason, round.now, last));
                    t.in_dlq = true;
                }
            }
            return;
        }
        let newly: Vec<usize> = (0..n)
            .filter(|&i| {
                step_state(t, i) == StepState::Pending
                    && !t.steps[i].queued
                    && t.template.steps[i].parents.iter().all(|&p| done[p])
            })
            .collect();
        if !newly.is_empty() {
            for &i in &newly {
                t.steps[i].queued = true;
                t.steps[i].ready_since = round.now;
                self.ready
                    .entry(t.steps[i].row.handler.clone())
                    .or_default()
                    .push_back((uuid.to_owned(), i));
                self.ready_len += 1;
            }
            let why = format!("{reason}: {} step(s) ready", newly.len());
            route_task(t, round, TaskState::EnqueuingSteps, &why);
            move_task(t, round, TaskState::StepsInProcess, &why);
            return;
        }
        if busy {
            if current != TaskState::WaitingForDependencies {
                route_task(t, round, TaskState::WaitingForDependencies, reason);
            }
            return;
        }
        if retrying {
            let target = if current == TaskState::StepsInProcess || current == TaskState::WaitingForRetry {
                TaskState::WaitingForRetry
            } else {
                TaskState::WaitingForDependencies
            };
            route_task(t, round, target, "waiting for a step's retry");
        }
    }

    /// A failed attempt already in ENQUEUED_AS_ERROR: retry or give up.
    fn settle_failure(
        &mut self,
        t: &mut TaskRt,
        i: usize,
        round: &mut Round,
        retryable: bool,
        requested_ms: Option<u64>,
        _kind: &str,
    ) {
        let step = &t.template.steps[i];
        let attempts = u32::try_from(t.steps[i].row.attempts).unwrap_or(u32::MAX);
        t.steps[i].row.last_failure_at = Some(round.now);
        if retryable && step.retry.retryable && attempts < step.retry.max_attempts {
            let delay = step
                .retry
                .delay(attempts.max(1), requested_ms.map(Duration::from_millis));
            let due = round.now + i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 4);
            t.steps[i].row.next_retry_at = Some(due);
            t.steps[i].row.backoff_request_ms = requested_ms.and_then(|m| i64::try_from(m).ok());
            move_step(
                t,
                i,
                round,
                StepState::WaitingForRetry,
                note(format!("attempt {attempts} failed; retry in {delay:?}")),
            );
            self.metrics.retries.inc();
            self.retries.push(Reverse((due, t.row.task_uuid.clone(), i)));
        } else {
            t.steps[i].row.next_retry_at = None;
            let why = if retryable && step.retry.retryable {
                format!(
                    "attempt {attempts} of {} failed: no attempts left",
                    step.retry.max_attempts
                )
            } else {
                format!("attempt {attempts} failed and is not retryable")
            };
            move_step(t, i, round, StepState::Error, note(why));
        }
    }

    fn result(&mut self, session: u64, result: wpb::StepResult, round: &mut Round) {
        self.seen(session, round.now);
        let id = result.assignment_id.clone();
        let ack = |round: &mut Round, accepted: bool, reason: &str| {
            round.outbound.push((
                session,
                wpb::ConnectResponse {
                    kind: Some(connect_response::Kind::Ack(wpb::ResultAck {
                        assignment_id: id.clone(),
                        accepted,
                        reason: reason.to_owned(),
                    })),
                },
            ));
        };
        let Some(lease) = self.leases.get(&id).filter(|l| l.session == session) else {
            return ack(
                round,
                false,
                "no such assignment is held by this worker (its lease expired, it was cancelled, or the orchestrator restarted)",
            );
        };
        let Some(outcome) = result.outcome else {
            // Refused without touching the attempt: its lease still runs.
            return ack(round, false, "a result needs success or failure");
        };
        let (task, i, assigned_at) = (lease.task.clone(), lease.step, lease.assigned_at);
        let Some(t) = self.tasks.get_mut(&task) else {
            return ack(round, false, "the task is gone");
        };
        let worker = self.workers.get_mut(&session).map(|w| {
            w.in_flight.remove(&id);
            w.uuid.clone()
        });
        self.leases.remove(&id);
        t.steps[i].assignment = None;
        self.metrics
            .step_seconds
            .observe(Duration::from_millis(u64::try_from(round.now - assigned_at).unwrap_or(0)).as_secs_f64());
        if step_state(t, i) == StepState::Enqueued {
            move_step(
                t,
                i,
                round,
                StepState::InProgress,
                StepNote {
                    worker: worker.clone(),
                    ..note("worker started the attempt")
                },
            );
        }
        let exec = i64::try_from(result.execution_time_ms).ok();
        // A success must carry a JSON object; anything else is the handler
        // breaking its contract, recorded as a permanent failure.
        let outcome = match outcome {
            wpb::step_result::Outcome::Success(s) => match serde_json::from_str(&s.result_json) {
                Ok(v @ Value::Object(_)) => Ok(v),
                Ok(_) | Err(_) => Err(wpb::Failure {
                    retryable: false,
                    message: "the step's result is not a JSON object".into(),
                    error_type: "invalid_result".into(),
                    backoff_ms: None,
                }),
            },
            wpb::step_result::Outcome::Failure(f) => Err(f),
        };
        match outcome {
            Ok(value) => {
                let text = value.to_string();
                t.steps[i].row.results = Some(text.clone());
                t.steps[i].row.error = None;
                t.steps[i].results = Some(value);
                move_step(
                    t,
                    i,
                    round,
                    StepState::EnqueuedForOrchestration,
                    StepNote {
                        worker,
                        success: Some(true),
                        execution_time_ms: exec,
                        result: Some(text),
                        ..note("worker returned a result")
                    },
                );
                move_step(t, i, round, StepState::Complete, note("result accepted"));
                ack(round, true, "");
                self.evaluate(&task, round, "step completed");
            }
            Err(f) => {
                t.steps[i].row.error = Some(
                    json!({"message": f.message, "error_type": f.error_type, "retryable": f.retryable}).to_string(),
                );
                move_step(
                    t,
                    i,
                    round,
                    StepState::EnqueuedAsErrorForOrchestration,
                    StepNote {
                        worker,
                        success: Some(false),
                        execution_time_ms: exec,
                        ..note(format!("worker reported a failure: {}", f.message))
                    },
                );
                let mut taken = self.tasks.remove(&task);
                if let Some(t) = taken.as_mut() {
                    self.settle_failure(t, i, round, f.retryable, f.backoff_ms, &f.error_type);
                }
                if let Some(t) = taken {
                    self.tasks.insert(task.clone(), t);
                }
                ack(round, true, "");
                self.evaluate(&task, round, "step failed");
            }
        }
    }

    /// Fails the attempt `id` without a worker's word (lease ended, worker
    /// left, time limit).
    fn fail_attempt(&mut self, id: &str, round: &mut Round, why: &str, kind: &str, delay_ms: Option<u64>) {
        let Some(lease) = self.leases.remove(id) else {
            return;
        };
        if let Some(w) = self.workers.get_mut(&lease.session) {
            w.in_flight.remove(id);
        }
        let Some(mut t) = self.tasks.remove(&lease.task) else {
            return;
        };
        let i = lease.step;
        if t.steps[i].assignment.as_deref() == Some(id) && step_in_flight(step_state(&t, i)) {
            t.steps[i].assignment = None;
            t.steps[i].row.error = Some(json!({"message": why, "error_type": kind, "retryable": true}).to_string());
            move_step(
                &mut t,
                i,
                round,
                StepState::EnqueuedAsErrorForOrchestration,
                StepNote {
                    success: Some(false),
                    ..note(why)
                },
            );
            self.settle_failure(&mut t, i, round, true, delay_ms, kind);
            let uuid = t.row.task_uuid.clone();
            self.tasks.insert(uuid.clone(), t);
            self.evaluate(&uuid, round, why);
        } else {
            self.tasks.insert(lease.task.clone(), t);
        }
        let _ = lease.attempt;
    }

    fn expire_leases(&mut self, round: &mut Round) {
        while let Some(Reverse((at, _))) = self.lease_heap.peek() {
            if *at > round.now {
                break;
            }
            let Some(Reverse((at, id))) = self.lease_heap.pop() else {
                break;
            };
            let Some(lease) = self.leases.get(&id) else {
                continue;
            };
            if lease.deadline != at {
                continue; // extended since
            }
            let timed_out = lease.timeout_at.is_some_and(|limit| limit <= round.now);
            let session = lease.session;
            if let Some(w) = self.workers.get_mut(&session) {
                if !timed_out {
                    w.suspect = true;
                }
                round.outbound.push((
                    session,
                    wpb::ConnectResponse {
                        kind: Some(connect_response::Kind::Cancel(wpb::CancelAssignment {
                            assignment_id: id.clone(),
                            reason: if timed_out {
                                "the step's time limit passed".into()
                            } else {
                                "the lease expired without a heartbeat".into()
                            },
                        })),
                    },
                ));
            }
            if timed_out {
                self.fail_attempt(&id, round, "the step's time limit passed", "timeout", None);
            } else {
                tracing::warn!(assignment = %id, "lease expired without heartbeat or result; retrying elsewhere");
                self.fail_attempt(
                    &id,
                    round,
                    "the lease expired without heartbeat or result (worker unavailable)",
                    "worker_unavailable",
                    Some(0),
                );
            }
        }
    }

    fn due_retries(&mut self, round: &mut Round) {
        let mut touched = Vec::new();
        while let Some(Reverse((at, _, _))) = self.retries.peek() {
            if *at > round.now {
                break;
            }
            let Some(Reverse((_, task, i))) = self.retries.pop() else {
                break;
            };
            if let Some(t) = self.tasks.get_mut(&task)
                && step_state(t, i) == StepState::WaitingForRetry
                && t.steps[i].row.next_retry_at.is_some_and(|due| due <= round.now)
            {
                t.steps[i].row.next_retry_at = None;
                move_step(t, i, round, StepState::Pending, note("retry due"));
                touched.push(task);
            }
        }
        touched.sort();
        touched.dedup();
        for task in touched {
            self.evaluate(&task, round, "retry due");
        }
    }

    /// DLQ entries for stale tasks and for steps no worker serves.
    fn sweep(&mut self, round: &mut Round) {
        let stale = i64::try_from(self.config.staleness.as_millis()).unwrap_or(i64::MAX);
        let no_worker = i64::try_from(self.config.no_worker_timeout.as_millis()).unwrap_or(i64::MAX);
        let served: HashSet<&str> = self
            .workers
            .values()
            .flat_map(|w| w.handlers.iter().map(String::as_str))
            .collect();
        for t in self.tasks.values_mut() {
            if t.in_dlq || task_terminal(state::parse_task(&t.row.state)) {
                continue;
            }
            let unserved = t.steps.iter().find(|s| {
                s.queued && round.now - s.ready_since >= no_worker && !served.contains(s.row.handler.as_str())
            });
            let reason = if let Some(s) = unserved {
                Some((
                    "worker_unavailable",
                    json!({"handler": s.row.handler, "step": s.row.name}),
                ))
            } else if round.now - t.row.state_since >= stale {
                Some((
                    "staleness_timeout",
                    json!({"minutes_in_state": (round.now - t.row.state_since) / 60_000}),
                ))
            } else {
                None
            };
            if let Some((reason, detail)) = reason {
                tracing::warn!(task = %t.row.task_uuid, reason, "task sent to the DLQ for investigation");
                round.batch.dlq.push(dlq_entry(t, reason, round.now, Some(detail)));
                t.in_dlq = true;
            }
        }
    }

    /// Hands ready steps to workers with free capacity.
    fn dispatch(&mut self, round: &mut Round) {
        if self.ready_len == 0 || self.workers.is_empty() {
            return;
        }
        let lease_ms = i64::try_from(self.config.lease.as_millis()).unwrap_or(30_000);
        let mut sessions: Vec<u64> = self.workers.keys().copied().collect();
        sessions.sort_unstable();
        loop {
            let mut progress = false;
            for &session in &sessions {
                let Some(w) = self.workers.get(&session) else { continue };
                if w.draining || w.suspect || w.in_flight.len() >= w.capacity {
                    continue;
                }
                let handlers = w.handlers.clone();
                let mut picked = None;
                for h in &handlers {
                    let Some(queue) = self.ready.get_mut(h) else { continue };
                    while let Some((task, i)) = queue.pop_front() {
                        self.ready_len = self.ready_len.saturating_sub(1);
                        if let Some(t) = self.tasks.get(&task)
                            && t.steps[i].queued
                            && step_state(t, i) == StepState::Pending
                        {
                            picked = Some((task, i));
                            break;
                        }
                    }
                    if picked.is_some() {
                        break;
                    }
                }
                let Some((task, i)) = picked else { continue };
                progress = true;
                let Some(w) = self.workers.get_mut(&session) else {
                    continue;
                };
                let Some(t) = self.tasks.get_mut(&task) else { continue };
                let id = Uuid::new_v4().to_string();
                t.steps[i].queued = false;
                t.steps[i].assignment = Some(id.clone());
                t.steps[i].row.attempts += 1;
                t.steps[i].row.last_attempted_at = Some(round.now);
                self.metrics.assignment_seconds.observe(
                    Duration::from_millis(u64::try_from(round.now - t.steps[i].ready_since).unwrap_or(0)).as_secs_f64(),
                );
                let worker_uuid = w.uuid.clone();
                move_step(
                    t,
                    i,
                    round,
                    StepState::Enqueued,
                    StepNote {
                        worker: Some(worker_uuid),
                        ..note(format!("assigned to worker {}", w.name))
                    },
                );
                let step = &t.template.steps[i];
                let timeout_at = step
                    .timeout
                    .map(|d| round.now + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4));
                let deadline = timeout_at.map_or(round.now + lease_ms, |l| l.min(round.now + lease_ms));
                let mut parents = serde_json::Map::new();
                for &p in &step.parents {
                    parents.insert(
                        t.steps[p].row.name.clone(),
                        t.steps[p].results.clone().unwrap_or(Value::Null),
                    );
                }
                let input = json!({"context": &*t.context, "parents": parents});
                round.outbound.push((
                    session,
                    wpb::ConnectResponse {
                        kind: Some(connect_response::Kind::Assignment(wpb::Assignment {
                            assignment_id: id.clone(),
                            task_uuid: task.clone(),
                            step_uuid: t.steps[i].row.step_uuid.clone(),
                            namespace: t.row.namespace.clone(),
                            task_name: t.row.name.clone(),
                            version: t.row.version.clone(),
                            step_name: step.name.clone(),
                            handler: step.handler.clone(),
                            input_json: input.to_string(),
                            attempt: u32::try_from(t.steps[i].row.attempts).unwrap_or(u32::MAX),
                            max_attempts: step.retry.max_attempts,
                            lease_deadline_ms: deadline,
                            timeout_ms: step
                                .timeout
                                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                            handler_config_json: step.handler_config.to_string(),
                        })),
                    },
                ));
                w.in_flight.insert(id.clone());
                self.leases.insert(
                    id.clone(),
                    Lease {
                        task,
                        step: i,
                        session,
                        attempt: t.steps[i].row.attempts,
                        deadline,
                        timeout_at,
                        assigned_at: round.now,
                    },
                );
                self.lease_heap.push(Reverse((deadline, id)));
            }
            if !progress || self.ready_len == 0 {
                break;
            }
        }
    }
}

fn dlq_entry(t: &TaskRt, reason: &str, now: i64, detail: Option<Value>) -> DlqRow {
    let snapshot = json!({
        "task_uuid": t.row.task_uuid,
        "namespace": t.row.namespace,
        "name": t.row.name,
        "version": t.row.version,
        "state": t.row.state,
        "context": &*t.context,
        "steps": t.steps.iter().map(|s| json!({
            "step_uuid": s.row.step_uuid,
            "name": s.row.name,
            "state": s.row.state,
            "attempts": s.row.attempts,
            "error": s.row.error.as_deref().and_then(|e| serde_json::from_str::<Value>(e).ok()),
        })).collect::<Vec<_>>(),
    });
    DlqRow {
        dlq_entry_uuid: new_id(),
        task_uuid: t.row.task_uuid.clone(),
        original_state: t.row.state.clone(),
        reason: reason.to_owned(),
        resolution_status: "pending".into(),
        resolution_at: None,
        resolution_notes: None,
        resolved_by: None,
        task_snapshot: snapshot.to_string(),
        metadata: detail.map(|d| d.to_string()),
        created_at: now,
        updated_at: now,
    }
}

/// The store's row types, re-exported for the API.
pub use store::History;
