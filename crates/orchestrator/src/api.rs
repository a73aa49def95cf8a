//! tasker.v1 TaskService, StepService and TemplateService (WIRE-tasker.md):
//! changes go through the engine, reads come from committed rows.

use std::{collections::HashMap, pin::Pin, time::Duration};

use cairn_client::names::ms_from_timestamp;
use cairn_proto::tasker::v1::{
    self as pb, step_service_server::StepService, task_service_server::TaskService, task_status_update::UpdateType,
    template_service_server::TemplateService,
};
use futures::Stream;
use serde_json::Value;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    convert::{self, Progress, parse_uuid},
    engine::{Action, CancelOutcome, Command, CreateSpec, EngineHandle, Event, ResolveSpec, Snapshot},
    state::{self, StepState, TaskState, task_terminal},
    store::{History, Store, TaskFilter},
    template::Template,
};

/// What the tasker.v1 services share.
#[derive(Clone)]
pub struct Api {
    pub store: Store,
    pub engine: EngineHandle,
    pub retry_after: Duration,
}

/// A database failure: logged in full, INTERNAL without details.
pub fn internal(error: impl std::fmt::Display) -> Status {
    tracing::error!(%error, "database error");
    Status::internal("Internal server error")
}

/// Who the caller is, for audit records: the key that authenticated the
/// call, never a string the client chose.
fn caller<T>(request: &Request<T>) -> String {
    match request.extensions().get::<cairn_service::auth::Principal>() {
        Some(p) => format!("key:{} ({})", p.key_id, p.name),
        None => "anonymous (auth disabled)".into(),
    }
}

fn task_of(snapshot: &Snapshot, edges: &[(String, String)]) -> pb::Task {
    convert::task(&snapshot.task, &convert::progress_of(&snapshot.steps, edges))
}

impl Api {
    async fn edges(&self, task_uuid: &str) -> Result<Vec<(String, String)>, Status> {
        self.store.edges(task_uuid).await.map_err(internal)
    }

    /// The task, its steps and edges, or NOT_FOUND.
    async fn load(
        &self,
        task_uuid: &str,
    ) -> Result<(crate::store::TaskRow, Vec<crate::store::StepRow>, Vec<(String, String)>), Status> {
        let task = self
            .store
            .task(task_uuid)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("Task not found: {task_uuid}")))?;
        let steps = self.store.steps(task_uuid).await.map_err(internal)?;
        let edges = self.edges(task_uuid).await?;
        Ok((task, steps, edges))
    }

    fn full_task(snapshot: &Snapshot) -> pb::Task {
        task_of(snapshot, &snapshot.edges)
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::TaskStatusUpdate, Status>> + Send>>;

const SORTABLE: [&str; 7] = [
    "created_at",
    "updated_at",
    "completed_at",
    "name",
    "namespace",
    "state",
    "priority",
];

fn update_of_history(h: &History, include_steps: bool) -> Option<pb::TaskStatusUpdate> {
    match h {
        History::Task(t) => Some(task_update(state::parse_task(&t.to_state), t.created_at, &t.reason)),
        History::Step(s, name) if include_steps => Some(step_update(
            &s.step_uuid,
            name,
            state::parse_step(&s.to_state),
            s.attempt,
            s.created_at,
        )),
        History::Step(..) => None,
    }
}

fn task_update(to: TaskState, at: i64, reason: &str) -> pb::TaskStatusUpdate {
    let (kind, error) = match to {
        TaskState::Complete | TaskState::ResolvedManually => (UpdateType::TaskComplete, None),
        TaskState::Error => (UpdateType::TaskError, Some(reason.to_owned())),
        _ => (UpdateType::TaskStateChange, None),
    };
    pb::TaskStatusUpdate {
        update_type: kind as i32,
        timestamp: Some(convert::ts(at)),
        task_state: Some(to as i32),
        step_update: None,
        error_message: error,
    }
}

fn step_update(uuid: &str, name: &str, to: StepState, attempt: i64, at: i64) -> pb::TaskStatusUpdate {
    pb::TaskStatusUpdate {
        update_type: UpdateType::StepStateChange as i32,
        timestamp: Some(convert::ts(at)),
        task_state: None,
        step_update: Some(pb::StepUpdate {
            step_uuid: uuid.to_owned(),
            name: name.to_owned(),
            state: to as i32,
            attempt: i32::try_from(attempt).unwrap_or(i32::MAX),
        }),
        error_message: None,
    }
}

/// Whether a stream of this task ends after this state.
fn ends_stream(state: TaskState) -> bool {
    task_terminal(state)
}

#[tonic::async_trait]
impl TaskService for Api {
    async fn create_task(
        &self,
        request: Request<pb::CreateTaskRequest>,
    ) -> Result<Response<pb::CreateTaskResponse>, Status> {
        let idempotency_key = request
            .metadata()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned);
        let r = request.into_inner();
        for (field, value) in [("name", &r.name), ("namespace", &r.namespace), ("version", &r.version)] {
            if value.trim().is_empty() {
                return Err(Status::invalid_argument(format!("{field} is required")));
            }
        }
        if idempotency_key.as_ref().is_some_and(|k| k.len() > 256) {
            return Err(Status::invalid_argument("idempotency-key: at most 256 characters"));
        }
        let correlation_id = match r.correlation_id.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
            Some(c) => parse_uuid("correlation_id", c)?,
            None => Uuid::new_v4().to_string(),
        };
        let parent_correlation_id = match r
            .parent_correlation_id
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            Some(c) => Some(parse_uuid("parent_correlation_id", c)?),
            None => None,
        };
        if r.tags.iter().any(|t| t.is_empty() || t.len() > 128) {
            return Err(Status::invalid_argument("tags: each tag is 1-128 characters"));
        }
        let depth = self.engine.ready_steps.load(std::sync::atomic::Ordering::Relaxed);
        let max = self.engine.config.max_ready_steps;
        if depth >= max {
            let mut status = cairn_client::status::with_reason(
                tonic::Code::Unavailable,
                format!("Backpressure active: {depth} ready steps wait for workers (bound {max}); retry later"),
                cairn_client::ErrorReason::Overloaded,
                Some(self.retry_after),
            );
            if let Ok(v) = self.retry_after.as_secs().max(1).to_string().parse() {
                status.metadata_mut().insert("retry-after", v);
            }
            return Err(status);
        }
        let context = r
            .context
            .as_ref()
            .map_or_else(|| Value::Object(Default::default()), convert::from_struct);
        let spec = CreateSpec {
            namespace: r.namespace.trim().to_owned(),
            name: r.name.trim().to_owned(),
            version: r.version.trim().to_owned(),
            context,
            initiator: r.initiator.filter(|s| !s.is_empty()).unwrap_or_else(|| "grpc".into()),
            source_system: r
                .source_system
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "grpc".into()),
            reason: r
                .reason
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "Task created via gRPC".into()),
            priority: r.priority.map(i64::from),
            tags: convert::distinct(&r.tags),
            correlation_id,
            parent_correlation_id,
            idempotency_key,
        };
        let snapshot = self.engine.ask(|reply| Command::Create(Box::new(spec), reply)).await?;
        let task = Api::full_task(&snapshot);
        Ok(Response::new(pb::CreateTaskResponse {
            task: Some(task),
            backpressure: Some(pb::BackpressureStatus {
                active: false,
                reason: None,
                retry_after_seconds: None,
                queue_depth: i64::try_from(depth).ok(),
                max_queue_depth: i64::try_from(max).ok(),
            }),
        }))
    }

    async fn get_task(&self, request: Request<pb::GetTaskRequest>) -> Result<Response<pb::GetTaskResponse>, Status> {
        let r = request.into_inner();
        let uuid = parse_uuid("task_uuid", &r.task_uuid)?;
        let (task, steps, edges) = self.load(&uuid).await?;
        let progress = convert::progress_of(&steps, &edges);
        Ok(Response::new(pb::GetTaskResponse {
            task: Some(convert::task(&task, &progress)),
            steps: if r.include_steps {
                steps.iter().map(|s| convert::step(s, &steps, &edges)).collect()
            } else {
                Vec::new()
            },
            context: r.include_context.then(|| convert::task_context(&task, &steps)),
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let r = request.into_inner();
        let pagination = r.pagination.unwrap_or_default();
        let limit = pagination.limit.unwrap_or(50);
        if !(1..=100).contains(&limit) {
            return Err(Status::invalid_argument("per_page must be between 1 and 100"));
        }
        let offset = pagination.offset.unwrap_or(0);
        if offset < 0 {
            return Err(Status::invalid_argument("offset must not be negative"));
        }
        let mut states = Vec::new();
        for raw in &r.states {
            match TaskState::try_from(*raw) {
                Ok(TaskState::Unspecified) | Err(_) => {
                    return Err(Status::invalid_argument(format!("states: {raw} is not a task state")));
                }
                Ok(s) => states.push(state::task_name(s).to_owned()),
            }
        }
        let (created_from, created_to) = match &r.created_at {
            Some(range) => (
                range.start.as_ref().and_then(ms_from_timestamp),
                range.end.as_ref().and_then(ms_from_timestamp),
            ),
            None => (None, None),
        };
        let sort = match &r.sort {
            None => ("created_at", false),
            Some(spec) => {
                let field = if spec.field.is_empty() {
                    "created_at"
                } else {
                    spec.field.as_str()
                };
                let Some(column) = SORTABLE.into_iter().find(|c| *c == field) else {
                    return Err(Status::invalid_argument(format!(
                        "sort.field: {field:?} is not one of {}",
                        SORTABLE.join(", ")
                    )));
                };
                let ascending = spec.direction == pb::SortDirection::Asc as i32;
                (column, ascending)
            }
        };
        let nonempty = |s: Option<String>| s.filter(|v| !v.is_empty());
        let filter = TaskFilter {
            namespace: nonempty(r.namespace),
            name: nonempty(r.name),
            states,
            created_from,
            created_to,
            initiator: nonempty(r.initiator),
            tags: convert::distinct(&r.tags),
            sort,
            limit: i64::from(limit),
            offset: i64::from(offset),
        };
        let (rows, total) = self.store.list_tasks(&filter).await.map_err(internal)?;
        let ids: Vec<&str> = rows.iter().map(|t| t.task_uuid.as_str()).collect();
        let counts = self.store.step_counts(&ids).await.map_err(internal)?;
        let ready = self.store.ready_counts(&ids).await.map_err(internal)?;
        let tasks: Vec<pb::Task> = rows
            .iter()
            .map(|t| {
                let progress =
                    Progress::from_counts(counts.get(&t.task_uuid), ready.get(&t.task_uuid).copied().unwrap_or(0));
                convert::task(t, &progress)
            })
            .collect();
        let count = i32::try_from(tasks.len()).unwrap_or(i32::MAX);
        Ok(Response::new(pb::ListTasksResponse {
            pagination: Some(pb::PaginationResponse {
                total,
                count,
                offset,
                has_more: i64::from(offset) + i64::from(count) < total,
            }),
            tasks,
        }))
    }

    async fn cancel_task(
        &self,
        request: Request<pb::CancelTaskRequest>,
    ) -> Result<Response<pb::CancelTaskResponse>, Status> {
        let r = request.into_inner();
        let task = parse_uuid("task_uuid", &r.task_uuid)?;
        let reason = r.reason.unwrap_or_default();
        let outcome = self.engine.ask(|reply| Command::Cancel { task, reason, reply }).await?;
        Ok(Response::new(match outcome {
            CancelOutcome::Cancelled(snapshot) => pb::CancelTaskResponse {
                task: Some(Api::full_task(&snapshot)),
                success: true,
                message: Some("Task cancelled".into()),
            },
            CancelOutcome::Refused(message) => pb::CancelTaskResponse {
                task: None,
                success: false,
                message: Some(message),
            },
        }))
    }

    async fn get_task_context(
        &self,
        request: Request<pb::GetTaskContextRequest>,
    ) -> Result<Response<pb::GetTaskContextResponse>, Status> {
        let uuid = parse_uuid("task_uuid", &request.into_inner().task_uuid)?;
        let (task, steps, _) = self.load(&uuid).await?;
        Ok(Response::new(pb::GetTaskContextResponse {
            context: Some(convert::task_context(&task, &steps)),
        }))
    }

    async fn get_task_summary(
        &self,
        request: Request<pb::GetTaskSummaryRequest>,
    ) -> Result<Response<pb::GetTaskSummaryResponse>, Status> {
        let uuid = parse_uuid("task_uuid", &request.into_inner().task_uuid)?;
        let (task, steps, edges) = self.load(&uuid).await?;
        let progress = convert::progress_of(&steps, &edges);
        let (execution, action, health) = progress.status(&task.state);
        let template = self
            .store
            .templates()
            .await
            .map_err(internal)?
            .into_iter()
            .find(|t| t.namespace == task.namespace && t.name == task.name && t.version == task.version)
            .and_then(|t| Template::from_yaml(&t.source).ok());
        let template_steps = template
            .as_ref()
            .map(|t| {
                t.steps
                    .iter()
                    .map(|s| pb::TaskSummaryTemplateStep {
                        name: s.name.clone(),
                        step_type: "standard".into(),
                        handler: s.handler.clone(),
                        dependencies: s.parents.iter().map(|&p| t.steps[p].name.clone()).collect(),
                        retryable: s.retry.retryable,
                        max_attempts: s.retry.max_attempts,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let dlq = self.store.dlq_for_task(&uuid).await.map_err(internal)?;
        let step_infos = steps
            .iter()
            .map(|s| {
                let step = convert::step(s, &steps, &edges);
                let error = s.error.as_deref().and_then(|e| serde_json::from_str::<Value>(e).ok());
                pb::StepSummaryInfo {
                    step_uuid: s.step_uuid.clone(),
                    name: s.name.clone(),
                    current_state: s.state.clone(),
                    created_at: Some(convert::rfc3339(s.created_at)),
                    completed_at: s.completed_at.map(convert::rfc3339),
                    last_attempted_at: s.last_attempted_at.map(convert::rfc3339),
                    attempts: step.attempts,
                    max_attempts: step.max_attempts,
                    dependencies_satisfied: step.dependencies_satisfied,
                    retry_eligible: step.retry_eligible,
                    error: error.map(|e| pb::StepErrorSummary {
                        error_type: e["error_type"].as_str().map(str::to_owned),
                        retryable: e["retryable"].as_bool().unwrap_or(false),
                        status_code: None,
                    }),
                }
            })
            .collect();
        Ok(Response::new(pb::GetTaskSummaryResponse {
            task: Some(pb::TaskSummaryMetadata {
                task_uuid: task.task_uuid.clone(),
                name: task.name.clone(),
                namespace: task.namespace.clone(),
                version: task.version.clone(),
                status: task.state.clone(),
                created_at: convert::rfc3339(task.created_at),
                updated_at: convert::rfc3339(task.updated_at),
                completed_at: task.completed_at.map(convert::rfc3339),
                initiator: task.initiator.clone(),
                source_system: task.source_system.clone(),
                reason: task.reason.clone(),
                correlation_id: task.correlation_id.clone(),
                total_steps: progress.total,
                pending_steps: progress.pending,
                in_progress_steps: progress.in_progress,
                completed_steps: progress.completed,
                failed_steps: progress.failed,
                completion_percentage: progress.percentage(),
                health_status: health.into(),
                execution_status: execution.into(),
                recommended_action: Some(action.into()),
            }),
            template: Some(pb::TaskSummaryTemplate { steps: template_steps }),
            steps: step_infos,
            dlq: Some(pb::DlqSummaryInfo {
                in_dlq: dlq.as_ref().is_some_and(|d| d.resolution_status == "pending"),
                dlq_reason: dlq.as_ref().map(|d| d.reason.clone()),
                resolution_status: dlq.as_ref().map(|d| d.resolution_status.clone()),
            }),
            links: Some(pb::TaskSummaryLinks {
                task: format!("/v1/tasks/{uuid}"),
                steps: format!("/v1/tasks/{uuid}/workflow_steps"),
                dlq: format!("/v1/tasks/{uuid}/dead_letter_queue"),
            }),
        }))
    }

    type StreamTaskStatusStream = UpdateStream;

    async fn stream_task_status(
        &self,
        request: Request<pb::StreamTaskStatusRequest>,
    ) -> Result<Response<Self::StreamTaskStatusStream>, Status> {
        let r = request.into_inner();
        let uuid = parse_uuid("task_uuid", &r.task_uuid)?;
        // Subscribe before reading history: nothing committed in between is missed.
        let subscribers = self.engine.events.clone();
        let mut events = subscribers.subscribe(&uuid);
        if self.store.task(&uuid).await.map_err(internal)?.is_none() {
            return Err(Status::not_found(format!("Task not found: {uuid}")));
        }
        let (tx, rx) = mpsc::channel::<Result<pb::TaskStatusUpdate, Status>>(64);
        let store = self.store.clone();
        let include_steps = r.include_steps;
        tokio::spawn(async move {
            let mut last_seq = 0;
            let mut ended = false;
            // Replays what is committed after `last_seq`; whether the task ended.
            async fn replay(
                store: &Store,
                uuid: &str,
                last_seq: &mut i64,
                include_steps: bool,
                tx: &mpsc::Sender<Result<pb::TaskStatusUpdate, Status>>,
            ) -> Result<bool, ()> {
                let (history, upto) = match store.history(uuid, *last_seq).await {
                    Ok(h) => h,
                    Err(error) => {
                        let _ = tx.send(Err(internal(error))).await;
                        return Err(());
                    }
                };
                let mut ended = false;
                for h in &history {
                    if let Some(update) = update_of_history(h, include_steps) {
                        tx.send(Ok(update)).await.map_err(|_| ())?;
                    }
                    if let History::Task(t) = h {
                        ended = ends_stream(state::parse_task(&t.to_state));
                    }
                }
                *last_seq = upto;
                Ok(ended)
            }
            match replay(&store, &uuid, &mut last_seq, include_steps, &tx).await {
                Ok(true) | Err(()) => return,
                Ok(false) => {}
            }
            while !ended {
                let event = tokio::select! {
                    () = tx.closed() => return,
                    event = events.recv() => event,
                };
                let Some(event) = event else {
                    // Fell behind the engine and was dropped: catch up from
                    // the database, subscribed again first.
                    events = subscribers.subscribe(&uuid);
                    match replay(&store, &uuid, &mut last_seq, include_steps, &tx).await {
                        Ok(true) | Err(()) => return,
                        Ok(false) => continue,
                    }
                };
                if event.seq() <= last_seq {
                    continue;
                }
                last_seq = event.seq();
                let update = match &*event {
                    Event::Task {
                        state,
                        at,
                        reason,
                        settled,
                        ..
                    } => {
                        ended = *settled && ends_stream(*state);
                        Some(task_update(*state, *at, reason))
                    }
                    Event::Step {
                        step_uuid,
                        name,
                        state,
                        attempt,
                        at,
                        ..
                    } => include_steps.then(|| step_update(step_uuid, name, *state, *attempt, *at)),
                };
                if let Some(update) = update
                    && tx.send(Ok(update)).await.is_err()
                {
                    return;
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl StepService for Api {
    async fn get_step(&self, request: Request<pb::GetStepRequest>) -> Result<Response<pb::GetStepResponse>, Status> {
        let r = request.into_inner();
        let task = parse_uuid("task_uuid", &r.task_uuid)?;
        let step = parse_uuid("step_uuid", &r.step_uuid)?;
        let (_, steps, edges) = self.load(&task).await?;
        let row = self.find_step(&task, &step, &steps).await?;
        Ok(Response::new(pb::GetStepResponse {
            step: Some(convert::step(row, &steps, &edges)),
        }))
    }

    async fn list_steps(
        &self,
        request: Request<pb::ListStepsRequest>,
    ) -> Result<Response<pb::ListStepsResponse>, Status> {
        let task = parse_uuid("task_uuid", &request.into_inner().task_uuid)?;
        let (_, steps, edges) = self.load(&task).await?;
        let out: Vec<pb::Step> = steps.iter().map(|s| convert::step(s, &steps, &edges)).collect();
        let count = i32::try_from(out.len()).unwrap_or(i32::MAX);
        Ok(Response::new(pb::ListStepsResponse {
            steps: out,
            pagination: Some(pb::PaginationResponse {
                total: i64::from(count),
                count,
                offset: 0,
                has_more: false,
            }),
        }))
    }

    async fn resolve_step(
        &self,
        request: Request<pb::ResolveStepRequest>,
    ) -> Result<Response<pb::ResolveStepResponse>, Status> {
        let performed_by = caller(&request);
        let r = request.into_inner();
        let task = parse_uuid("task_uuid", &r.task_uuid)?;
        let step = parse_uuid("step_uuid", &r.step_uuid)?;
        let action = match pb::StepManualActionType::try_from(r.action_type) {
            Ok(pb::StepManualActionType::Unspecified) => {
                return Err(Status::invalid_argument("Action type must be specified"));
            }
            Err(_) => return Err(Status::invalid_argument("Invalid action type")),
            Ok(pb::StepManualActionType::ResetForRetry) => Action::ResetForRetry,
            Ok(pb::StepManualActionType::ResolveManually) => Action::ResolveManually,
            Ok(pb::StepManualActionType::CompleteManually) => Action::CompleteManually,
        };
        let result = r.result.as_ref().map(convert::from_struct);
        if action == Action::CompleteManually && result.is_none() {
            return Err(Status::invalid_argument(
                "result is required to complete a step manually",
            ));
        }
        let reason = if r.performed_by.is_empty() {
            r.reason.clone()
        } else {
            format!("{} (client says performed by {:?})", r.reason, r.performed_by)
        };
        let snapshot = self
            .engine
            .ask(|reply| {
                Command::Resolve(
                    Box::new(ResolveSpec {
                        task: task.clone(),
                        step,
                        action,
                        performed_by,
                        reason,
                        result,
                    }),
                    reply,
                )
            })
            .await?;
        let i = snapshot.step.unwrap_or(0);
        let row = snapshot
            .steps
            .get(i)
            .ok_or_else(|| Status::internal("resolved step missing from the answer"))?;
        Ok(Response::new(pb::ResolveStepResponse {
            step: Some(convert::step(row, &snapshot.steps, &snapshot.edges)),
        }))
    }

    async fn get_step_audit(
        &self,
        request: Request<pb::GetStepAuditRequest>,
    ) -> Result<Response<pb::GetStepAuditResponse>, Status> {
        let r = request.into_inner();
        let task = parse_uuid("task_uuid", &r.task_uuid)?;
        let step = parse_uuid("step_uuid", &r.step_uuid)?;
        let (row, steps, _) = self.load(&task).await?;
        let found = self.find_step(&task, &step, &steps).await?;
        let audit = self.store.step_audit(&step).await.map_err(internal)?;
        let records = audit
            .into_iter()
            .map(|a| {
                let to = state::parse_step(&a.to_state);
                pb::StepAuditRecord {
                    audit_uuid: a.audit_uuid,
                    step_uuid: a.step_uuid,
                    transition_uuid: a.transition_uuid,
                    task_uuid: a.task_uuid,
                    recorded_at: Some(convert::ts(a.created_at)),
                    worker_uuid: a.worker_uuid,
                    correlation_id: Some(row.correlation_id.clone()),
                    success: a.success.unwrap_or(!matches!(
                        to,
                        StepState::Error | StepState::EnqueuedAsErrorForOrchestration
                    )),
                    execution_time_ms: a.execution_time_ms,
                    result: convert::text_to_struct(a.result.as_deref()),
                    step_name: found.name.clone(),
                    from_state: a.from_state.as_deref().map(|s| state::parse_step(s) as i32),
                    to_state: to as i32,
                }
            })
            .collect();
        Ok(Response::new(pb::GetStepAuditResponse { audit_records: records }))
    }
}

impl Api {
    /// The step of the task; NOT_FOUND for an unknown step, INVALID_ARGUMENT
    /// for a step of another task.
    async fn find_step<'a>(
        &self,
        task: &str,
        step: &str,
        steps: &'a [crate::store::StepRow],
    ) -> Result<&'a crate::store::StepRow, Status> {
        if let Some(row) = steps.iter().find(|s| s.step_uuid == step) {
            return Ok(row);
        }
        match self.store.task_of_step(step).await.map_err(internal)? {
            Some(other) => Err(Status::invalid_argument(format!(
                "step {step} belongs to task {other}, not {task}"
            ))),
            None => Err(Status::not_found(format!("Step not found: {step}"))),
        }
    }
}

#[tonic::async_trait]
impl TemplateService for Api {
    async fn list_templates(
        &self,
        request: Request<pb::ListTemplatesRequest>,
    ) -> Result<Response<pb::ListTemplatesResponse>, Status> {
        let namespace = request.into_inner().namespace.filter(|n| !n.is_empty());
        let rows = self.store.templates().await.map_err(internal)?;
        let mut namespaces: Vec<(String, i64)> = Vec::new();
        for row in &rows {
            match namespaces.iter_mut().find(|(n, _)| n == &row.namespace) {
                Some((_, count)) => *count += 1,
                None => namespaces.push((row.namespace.clone(), 1)),
            }
        }
        let total = i64::try_from(rows.len()).unwrap_or(i64::MAX);
        Ok(Response::new(pb::ListTemplatesResponse {
            namespaces: namespaces
                .into_iter()
                .map(|(name, template_count)| pb::NamespaceSummary {
                    name,
                    description: None,
                    template_count,
                })
                .collect(),
            templates: rows
                .into_iter()
                .filter(|r| namespace.as_ref().is_none_or(|n| n == &r.namespace))
                .map(|r| pb::TemplateSummary {
                    name: r.name,
                    namespace: r.namespace,
                    version: r.version,
                    description: r.description,
                    step_count: r.step_count,
                })
                .collect(),
            total_count: total,
        }))
    }

    async fn get_template(
        &self,
        request: Request<pb::GetTemplateRequest>,
    ) -> Result<Response<pb::GetTemplateResponse>, Status> {
        let r = request.into_inner();
        let rows = self.store.templates().await.map_err(internal)?;
        let Some(row) = rows
            .into_iter()
            .find(|t| t.namespace == r.namespace && t.name == r.name && t.version == r.version)
        else {
            return Err(Status::not_found(format!(
                "Template not found: {}/{}@{}",
                r.namespace, r.name, r.version
            )));
        };
        let template = Template::from_yaml(&row.source).map_err(internal)?;
        let mut configuration = HashMap::new();
        if let Some(schema) = &template.input_schema {
            configuration.insert("input_schema".to_owned(), convert::to_value(schema));
        }
        Ok(Response::new(pb::GetTemplateResponse {
            template: Some(pb::TemplateDetail {
                name: row.name,
                namespace: row.namespace,
                version: row.version,
                description: row.description,
                configuration: (!configuration.is_empty()).then(|| prost_types::Struct {
                    fields: configuration.into_iter().collect(),
                }),
                steps: template
                    .steps
                    .iter()
                    .map(|s| pb::StepDefinition {
                        name: s.name.clone(),
                        description: s.description.clone(),
                        default_retryable: s.retry.retryable,
                        default_max_attempts: i32::try_from(s.retry.max_attempts).unwrap_or(i32::MAX),
                    })
                    .collect(),
            }),
        }))
    }
}
