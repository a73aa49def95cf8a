//! `cairn-worker`: run workflow steps for `cairn-orchestrator`.
//!
//! A [`Worker`] connects to the orchestrator's `WorkerService/Connect`
//! stream, says which handlers it serves and how many steps it runs at once,
//! registers the templates it implements, and then runs what it is assigned:
//! each handler is an async function from a [`Step`] to a JSON object (or a
//! [`StepError`]). While a step runs the worker sends heartbeats, so its
//! lease holds; a step the orchestrator cancels (task cancelled, time limit)
//! sees [`Step::cancelled`]. When the stream breaks the worker reconnects
//! with backoff (steps it held are retried by the orchestrator elsewhere).
//! When the shutdown future given to [`Worker::run`] completes, the worker
//! drains: it takes no new steps, finishes those it runs, waits for their
//! results to be acknowledged, and disconnects.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use cairn_worker::{Step, Worker};
//! let worker = Worker::builder("http://127.0.0.1:50054")
//!     .concurrency(8)
//!     .handler("demo.square", |step: Step| async move {
//!         let n = step.context()["even_number"].as_i64().unwrap_or(0);
//!         Ok(serde_json::json!({"result": n * n}))
//!     })
//!     .build()?;
//! worker.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use cairn_client::{Backoff, Client, ClientConfig};
use cairn_proto::cairn::orchestrator::v1::{
    self as pb, connect_request, connect_response, worker_service_client::WorkerServiceClient,
};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

/// What a handler returns.
pub type StepResult = Result<Value, StepError>;

type Handler = Arc<dyn Fn(Step) -> Pin<Box<dyn Future<Output = StepResult> + Send>> + Send + Sync>;

/// Why a step failed.
#[derive(Debug, Clone, PartialEq)]
pub struct StepError {
    /// Whether another attempt may succeed.
    pub retryable: bool,
    pub message: String,
    /// A short machine-readable kind.
    pub error_type: String,
    /// The pause to ask for before the next attempt (capped by the template).
    pub backoff: Option<Duration>,
}

impl StepError {
    /// A failure another attempt may fix.
    pub fn retryable(message: impl Into<String>) -> Self {
        StepError {
            retryable: true,
            message: message.into(),
            error_type: "error".into(),
            backoff: None,
        }
    }

    /// A failure no retry fixes.
    pub fn permanent(message: impl Into<String>) -> Self {
        StepError {
            retryable: false,
            ..StepError::retryable(message)
        }
    }

    pub fn with_type(mut self, error_type: impl Into<String>) -> Self {
        self.error_type = error_type.into();
        self
    }

    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = Some(backoff);
        self
    }
}

/// One attempt of one step, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Step {
    /// Unique per attempt: the idempotency key for side effects.
    pub assignment_id: String,
    pub task_uuid: String,
    pub step_uuid: String,
    pub namespace: String,
    pub task_name: String,
    pub version: String,
    pub step_name: String,
    pub handler: String,
    pub attempt: u32,
    pub max_attempts: u32,
    /// `{"context": …, "parents": {name: result}}`.
    pub input: Value,
    /// The handler's `initialization` from the template.
    pub config: Value,
    cancel: watch::Receiver<bool>,
}

impl Step {
    /// The task's input context.
    pub fn context(&self) -> &Value {
        &self.input["context"]
    }

    /// The result of the parent step `name`.
    pub fn parent(&self, name: &str) -> Option<&Value> {
        self.input["parents"].get(name)
    }

    /// Every parent's result, by step name.
    pub fn parents(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.input["parents"].as_object().into_iter().flatten()
    }

    /// Completes when the orchestrator cancels this attempt.
    pub async fn cancelled(&self) {
        let mut rx = self.cancel.clone();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Whether the orchestrator cancelled this attempt.
    pub fn is_cancelled(&self) -> bool {
        *self.cancel.borrow()
    }
}

/// Builds a [`Worker`].
pub struct Builder {
    address: String,
    key: Option<String>,
    name: String,
    concurrency: u32,
    handlers: HashMap<String, Handler>,
    templates: Vec<String>,
    client: ClientConfig,
    drain_timeout: Duration,
}

impl Builder {
    /// The API key (scope `workers:connect`).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.key = (!key.is_empty()).then_some(key);
        self
    }

    /// A name for the orchestrator's logs and audits.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Steps run at once (the orchestrator never assigns more).
    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    /// How long a drain waits for running steps before giving up on them.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Serves `name` with `handler`.
    pub fn handler<F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Step) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StepResult> + Send + 'static,
    {
        self.handlers
            .insert(name.into(), Arc::new(move |step| Box::pin(handler(step))));
        self
    }

    /// A template (YAML) this worker implements, registered on connect.
    pub fn template(mut self, yaml: impl Into<String>) -> Self {
        self.templates.push(yaml.into());
        self
    }

    pub fn build(self) -> anyhow::Result<Worker> {
        anyhow::ensure!(!self.handlers.is_empty(), "a worker needs at least one handler");
        anyhow::ensure!(self.concurrency > 0, "concurrency must be at least 1");
        let mut client = Client::connect_lazy(&self.address, &self.client)?
            // The stream lives until the server's lifetime limit (a day by default).
            .with_timeout(Duration::from_secs(26 * 3600));
        if let Some(key) = &self.key {
            client = client.with_key(key).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        }
        Ok(Worker {
            client,
            name: self.name,
            concurrency: self.concurrency,
            handlers: Arc::new(self.handlers),
            templates: self.templates,
            drain_timeout: self.drain_timeout,
        })
    }
}

/// A connected (or connecting) worker; see the crate docs.
pub struct Worker {
    client: Client,
    name: String,
    concurrency: u32,
    handlers: Arc<HashMap<String, Handler>>,
    templates: Vec<String>,
    drain_timeout: Duration,
}

/// Steps running now: assignment id → its cancel switch.
type Running = Arc<Mutex<HashMap<String, watch::Sender<bool>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a session ended.
enum End {
    /// Drained on shutdown: stop.
    Drained,
    /// The stream broke: reconnect.
    Broken(String),
}

impl Worker {
    /// A builder for a worker of the orchestrator at `address`.
    pub fn builder(address: impl Into<String>) -> Builder {
        Builder {
            address: address.into(),
            key: None,
            name: format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into()),
                std::process::id()
            ),
            concurrency: 8,
            handlers: HashMap::new(),
            templates: Vec::new(),
            client: ClientConfig::default(),
            drain_timeout: Duration::from_secs(30),
        }
    }

    /// Runs until `shutdown` completes (then drains); reconnects when the
    /// stream breaks. Fails only on a refusal retrying cannot fix (bad
    /// hello, conflicting template, bad key).
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let (stop_tx, stop_rx) = watch::channel(false);
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut attempt = 0u32;
        loop {
            let session = self.session(stop_rx.clone());
            tokio::pin!(session);
            let end = tokio::select! {
                end = &mut session => end,
                () = &mut shutdown => {
                    let _ = stop_tx.send(true);
                    session.await
                }
            };
            match end {
                Ok(End::Drained) => return Ok(()),
                Ok(End::Broken(why)) => {
                    tracing::warn!(%why, "worker stream ended; reconnecting");
                    attempt = 0;
                }
                Err(status) => {
                    use tonic::Code::*;
                    if matches!(
                        status.code(),
                        InvalidArgument | AlreadyExists | PermissionDenied | Unauthenticated
                    ) {
                        anyhow::bail!("the orchestrator refused this worker: {}", status.message());
                    }
                    tracing::warn!(code = ?status.code(), message = status.message(), "cannot connect to the orchestrator; retrying");
                }
            }
            if *stop_rx.borrow() {
                return Ok(());
            }
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(backoff.delay(attempt, None)) => {}
                () = &mut shutdown => return Ok(()),
            }
        }
    }

    /// One stream, from hello to its end.
    async fn session(&self, mut stop: watch::Receiver<bool>) -> Result<End, tonic::Status> {
        let (tx, rx) = mpsc::channel::<pb::ConnectRequest>(usize::try_from(self.concurrency).unwrap_or(8) * 4 + 16);
        let hello = pb::ConnectRequest {
            kind: Some(connect_request::Kind::Hello(pb::Hello {
                worker_name: self.name.clone(),
                handlers: self.handlers.keys().cloned().collect(),
                concurrency: self.concurrency,
                templates: self.templates.clone(),
            })),
        };
        tx.try_send(hello)
            .map_err(|_| tonic::Status::internal("cannot queue hello"))?;
        let requests = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        let mut client = WorkerServiceClient::new(self.client.clone());
        let mut inbound = client.connect(requests).await?.into_inner();
        let welcome = match inbound.message().await? {
            Some(pb::ConnectResponse {
                kind: Some(connect_response::Kind::Welcome(w)),
            }) => w,
            _ => return Ok(End::Broken("the orchestrator did not answer the hello".into())),
        };
        tracing::info!(worker_uuid = %welcome.worker_uuid, templates = ?welcome.templates, "connected to the orchestrator");
        let running: Running = Arc::default();
        let heartbeat = Duration::from_millis(welcome.heartbeat_interval_ms.max(50));
        let mut ticker = tokio::time::interval(heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut draining = false;
        let mut drain_deadline = None;
        let mut unacked = 0usize;
        loop {
            if draining && lock(&running).is_empty() && unacked == 0 {
                return Ok(End::Drained);
            }
            let deadline = drain_deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
            tokio::select! {
                message = inbound.message() => {
                    let message = match message {
                        Ok(Some(m)) => m,
                        Ok(None) => {
                            self.cancel_all(&running);
                            return Ok(End::Broken("the orchestrator closed the stream".into()));
                        }
                        Err(status) => {
                            self.cancel_all(&running);
                            return Ok(End::Broken(format!("{}: {}", status.code(), status.message())));
                        }
                    };
                    match message.kind {
                        Some(connect_response::Kind::Assignment(a)) => {
                            unacked += 1;
                            self.start(a, &running, &tx);
                        }
                        Some(connect_response::Kind::Ack(ack)) => {
                            unacked = unacked.saturating_sub(1);
                            if !ack.accepted {
                                tracing::warn!(assignment = %ack.assignment_id, reason = %ack.reason, "result refused");
                            }
                        }
                        Some(connect_response::Kind::Cancel(c)) => {
                            if let Some(switch) = lock(&running).remove(&c.assignment_id) {
                                // Its result, if any, is refused: no ack will come.
                                unacked = unacked.saturating_sub(1);
                                let _ = switch.send(true);
                                tracing::info!(assignment = %c.assignment_id, reason = %c.reason, "step cancelled");
                            }
                        }
                        Some(connect_response::Kind::Welcome(_) | connect_response::Kind::HeartbeatAck(_)) | None => {}
                    }
                }
                _ = ticker.tick() => {
                    let ids: Vec<String> = lock(&running).keys().cloned().collect();
                    let beat = pb::ConnectRequest {
                        kind: Some(connect_request::Kind::Heartbeat(pb::Heartbeat { assignment_ids: ids })),
                    };
                    if tx.send(beat).await.is_err() {
                        return Ok(End::Broken("request stream closed".into()));
                    }
                }
                changed = stop.changed(), if !draining => {
                    if changed.is_err() || *stop.borrow() {
                        draining = true;
                        drain_deadline = Some(tokio::time::Instant::now() + self.drain_timeout);
                        tracing::info!(running = lock(&running).len(), "draining: finishing running steps");
                        let drain = pb::ConnectRequest { kind: Some(connect_request::Kind::Drain(pb::Drain {})) };
                        let _ = tx.send(drain).await;
                    }
                }
                () = tokio::time::sleep_until(deadline), if drain_deadline.is_some() => {
                    tracing::warn!(running = lock(&running).len(), "drain timed out; leaving (the orchestrator retries what was running)");
                    self.cancel_all(&running);
                    return Ok(End::Drained);
                }
            }
        }
    }

    fn cancel_all(&self, running: &Running) {
        for (_, switch) in lock(running).drain() {
            let _ = switch.send(true);
        }
    }

    /// Runs one assignment on its own task.
    fn start(&self, a: pb::Assignment, running: &Running, tx: &mpsc::Sender<pb::ConnectRequest>) {
        let (switch, cancel) = watch::channel(false);
        lock(running).insert(a.assignment_id.clone(), switch);
        let handler = self.handlers.get(&a.handler).cloned();
        let (running, tx) = (running.clone(), tx.clone());
        tokio::spawn(async move {
            let id = a.assignment_id.clone();
            let _ = tx
                .send(pb::ConnectRequest {
                    kind: Some(connect_request::Kind::Started(pb::Started {
                        assignment_id: id.clone(),
                    })),
                })
                .await;
            let step = Step {
                assignment_id: id.clone(),
                task_uuid: a.task_uuid,
                step_uuid: a.step_uuid,
                namespace: a.namespace,
                task_name: a.task_name,
                version: a.version,
                step_name: a.step_name,
                handler: a.handler.clone(),
                attempt: a.attempt,
                max_attempts: a.max_attempts,
                input: serde_json::from_str(&a.input_json).unwrap_or(Value::Null),
                config: serde_json::from_str(&a.handler_config_json).unwrap_or(Value::Null),
                cancel,
            };
            let started = std::time::Instant::now();
            let outcome = match handler {
                Some(h) => h(step).await,
                None => Err(StepError::permanent(format!(
                    "this worker has no handler {:?}",
                    a.handler
                ))),
            };
            // Cancelled meanwhile: the orchestrator takes no result.
            if lock(&running).remove(&id).is_none() {
                return;
            }
            let outcome = match outcome {
                Ok(value) => pb::step_result::Outcome::Success(pb::Success {
                    result_json: value.to_string(),
                }),
                Err(e) => pb::step_result::Outcome::Failure(pb::Failure {
                    retryable: e.retryable,
                    message: e.message,
                    error_type: e.error_type,
                    backoff_ms: e.backoff.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                }),
            };
            let _ = tx
                .send(pb::ConnectRequest {
                    kind: Some(connect_request::Kind::Result(pb::StepResult {
                        assignment_id: id,
                        outcome: Some(outcome),
                        execution_time_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    })),
                })
                .await;
        });
    }
}

/// Completes on SIGTERM or Ctrl-C (for binaries: `worker.run(shutdown_signal())`).
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
