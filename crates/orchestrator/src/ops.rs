//! tasker.v1 AnalyticsService, DlqService, HealthService and ConfigService.
//!
//! Analytics rates are percentages (0–100, two decimals), as tasker-core
//! returns them, whatever the proto comments say.

use std::{collections::HashMap, sync::atomic::Ordering, time::Instant};

use cairn_proto::tasker::v1::{
    self as pb, analytics_service_server::AnalyticsService, config_service_server::ConfigService,
    dlq_service_server::DlqService, health_service_server::HealthService,
};
use tonic::{Request, Response, Status};

use crate::{
    api::{Api, internal},
    convert::{self, parse_uuid},
    engine::{Command, now_ms},
    state::{self, StepState, TaskState},
    store::{DlqRow, DlqUpdate},
};

/// Settings the operational services report.
#[derive(Clone)]
pub struct Ops {
    pub api: Api,
    pub environment: String,
    pub auth_enabled: bool,
    pub max_connections: u32,
    pub staleness_minutes: i64,
}

#[allow(clippy::cast_precision_loss)]
fn pct(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        ((part as f64 * 100.0 / whole as f64) * 100.0).round() / 100.0
    }
}

fn dlq_reason(text: &str) -> pb::DlqReason {
    match text {
        "staleness_timeout" => pb::DlqReason::StalenessTimeout,
        "max_retries_exceeded" => pb::DlqReason::MaxRetriesExceeded,
        "dependency_cycle_detected" => pb::DlqReason::DependencyCycleDetected,
        "worker_unavailable" => pb::DlqReason::WorkerUnavailable,
        "manual_dlq" => pb::DlqReason::ManualDlq,
        _ => pb::DlqReason::Unspecified,
    }
}

fn dlq_status(text: &str) -> pb::DlqResolutionStatus {
    match text {
        "pending" => pb::DlqResolutionStatus::Pending,
        "manually_resolved" => pb::DlqResolutionStatus::ManuallyResolved,
        "permanently_failed" => pb::DlqResolutionStatus::PermanentlyFailed,
        "cancelled" => pb::DlqResolutionStatus::Cancelled,
        _ => pb::DlqResolutionStatus::Unspecified,
    }
}

/// A task that failed: given up, or held for an operator.
fn failed_state(state: &str) -> bool {
    matches!(state, "error" | "blocked_by_failures")
}

fn dlq_status_name(status: pb::DlqResolutionStatus) -> Option<&'static str> {
    match status {
        pb::DlqResolutionStatus::Unspecified => None,
        pb::DlqResolutionStatus::Pending => Some("pending"),
        pb::DlqResolutionStatus::ManuallyResolved => Some("manually_resolved"),
        pb::DlqResolutionStatus::PermanentlyFailed => Some("permanently_failed"),
        pb::DlqResolutionStatus::Cancelled => Some("cancelled"),
    }
}

fn dlq_entry(d: DlqRow) -> pb::DlqEntry {
    pb::DlqEntry {
        dlq_reason: dlq_reason(&d.reason) as i32,
        resolution_status: dlq_status(&d.resolution_status) as i32,
        dlq_timestamp: Some(convert::ts(d.created_at)),
        resolution_timestamp: d.resolution_at.map(convert::ts),
        task_snapshot: Some(convert::text_to_struct(Some(&d.task_snapshot)).unwrap_or_default()),
        metadata: convert::text_to_struct(d.metadata.as_deref()),
        created_at: Some(convert::ts(d.created_at)),
        updated_at: Some(convert::ts(d.updated_at)),
        dlq_entry_uuid: d.dlq_entry_uuid,
        task_uuid: d.task_uuid,
        original_state: d.original_state,
        resolution_notes: d.resolution_notes,
        resolved_by: d.resolved_by,
    }
}

fn limit(value: Option<i32>, default: i64, max: i64, field: &str) -> Result<i64, Status> {
    match value {
        None => Ok(default),
        Some(n) if n >= 1 && i64::from(n) <= max => Ok(i64::from(n)),
        Some(n) => Err(Status::invalid_argument(format!(
            "{field} must be between 1 and {max}, not {n}"
        ))),
    }
}

/// How urgent a pending DLQ entry is: its age in minutes, weighted by why it
/// is there (a missing worker blocks new work; staleness may clear itself).
#[allow(clippy::cast_precision_loss)]
fn priority_score(reason: &str, minutes: f64) -> f64 {
    let weight = match reason {
        "worker_unavailable" => 3.0,
        "max_retries_exceeded" | "dependency_cycle_detected" => 2.0,
        "manual_dlq" => 1.5,
        _ => 1.0,
    };
    ((weight * (10.0 + minutes)) * 100.0).round() / 100.0
}

#[tonic::async_trait]
impl AnalyticsService for Ops {
    async fn get_performance_metrics(
        &self,
        request: Request<pb::GetPerformanceMetricsRequest>,
    ) -> Result<Response<pb::GetPerformanceMetricsResponse>, Status> {
        let hours = request.into_inner().hours.unwrap_or(24);
        if hours < 0 {
            return Err(Status::invalid_argument("hours must not be negative"));
        }
        let now = now_ms();
        let since = if hours == 0 {
            0
        } else {
            now - i64::from(hours) * 3_600_000
        };
        let store = &self.api.store;
        let all: i64 = store.task_state_counts().await.map_err(internal)?.values().sum();
        let tasks = store.tasks_since(since).await.map_err(internal)?;
        let attempts = store.attempts_since(since).await.map_err(internal)?;
        let total = i64::try_from(tasks.len()).unwrap_or(i64::MAX);
        let finished = |s: &str| matches!(s, "complete" | "resolved_manually");
        let completed = tasks.iter().filter(|t| finished(&t.state)).count();
        let failed = tasks.iter().filter(|t| failed_state(&t.state)).count();
        let active = tasks
            .iter()
            .filter(|t| !state::task_terminal(state::parse_task(&t.state)))
            .count();
        let durations: Vec<i64> = tasks
            .iter()
            .filter(|t| finished(&t.state))
            .filter_map(|t| t.completed_at.map(|c| c - t.created_at))
            .collect();
        #[allow(clippy::cast_precision_loss)]
        let mean = |v: &[i64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<i64>() as f64 / v.len() as f64 / 1000.0
            }
        };
        let step_ms: Vec<i64> = attempts.iter().map(|a| a.execution_time_ms).collect();
        let span_hours = if hours == 0 {
            let first = tasks.iter().map(|t| t.created_at).min().unwrap_or(now);
            ((now - first) / 3_600_000).max(1)
        } else {
            i64::from(hours)
        };
        let (completed, failed) = (
            i64::try_from(completed).unwrap_or(0),
            i64::try_from(failed).unwrap_or(0),
        );
        let health = if completed + failed == 0 {
            1.0
        } else {
            pct(completed, completed + failed) / 100.0
        };
        Ok(Response::new(pb::GetPerformanceMetricsResponse {
            total_tasks: all,
            active_tasks: i64::try_from(active).unwrap_or(0),
            completed_tasks: completed,
            failed_tasks: failed,
            completion_rate: pct(completed, total),
            error_rate: pct(failed, total),
            average_task_duration_seconds: mean(&durations),
            average_step_duration_seconds: mean(&step_ms),
            tasks_per_hour: total / span_hours,
            steps_per_hour: i64::try_from(attempts.len()).unwrap_or(0) / span_hours,
            system_health_score: health,
            analysis_period_start: convert::rfc3339(since),
            calculated_at: convert::rfc3339(now),
        }))
    }

    async fn get_bottleneck_analysis(
        &self,
        request: Request<pb::GetBottleneckAnalysisRequest>,
    ) -> Result<Response<pb::GetBottleneckAnalysisResponse>, Status> {
        let r = request.into_inner();
        let limit = usize::try_from(limit(r.limit, 10, 100, "limit")?).unwrap_or(10);
        let min_executions = i64::from(r.min_executions.unwrap_or(5).max(1));
        let store = &self.api.store;
        let attempts = store.attempts_since(0).await.map_err(internal)?;
        #[derive(Default)]
        struct Agg {
            sum_ms: i64,
            max_ms: i64,
            count: i64,
            errors: i64,
            last: i64,
            steps: i64,
        }
        let mut by_step: HashMap<(String, String, String, String), Agg> = HashMap::new();
        for a in attempts {
            let e = by_step
                .entry((a.namespace, a.task_name, a.version, a.step_name))
                .or_default();
            e.sum_ms += a.execution_time_ms;
            e.max_ms = e.max_ms.max(a.execution_time_ms);
            e.count += 1;
            e.errors += i64::from(!a.success);
            e.last = e.last.max(a.at);
        }
        #[allow(clippy::cast_precision_loss)]
        let avg = |a: &Agg| a.sum_ms as f64 / a.count.max(1) as f64 / 1000.0;
        let mut slow_steps: Vec<_> = by_step.into_iter().filter(|(_, a)| a.count >= min_executions).collect();
        slow_steps.sort_by(|x, y| avg(&y.1).total_cmp(&avg(&x.1)));
        let mut recommendations = Vec::new();
        let slow_steps: Vec<pb::SlowStepInfo> = slow_steps
            .into_iter()
            .take(limit)
            .map(|((ns, task, version, step), a)| {
                let error_rate = pct(a.errors, a.count);
                if error_rate >= 20.0 {
                    recommendations.push(format!(
                        "step {step} of {ns}/{task}@{version} fails {error_rate}% of attempts: check its handler and the services it calls"
                    ));
                }
                pb::SlowStepInfo {
                    namespace_name: ns,
                    task_name: task,
                    version,
                    step_name: step,
                    average_duration_seconds: avg(&a),
                    #[allow(clippy::cast_precision_loss)]
                    max_duration_seconds: a.max_ms as f64 / 1000.0,
                    execution_count: a.count,
                    error_count: a.errors,
                    error_rate,
                    last_executed_at: Some(convert::rfc3339(a.last)),
                }
            })
            .collect();
        let tasks = store.tasks_since(0).await.map_err(internal)?;
        let mut by_task: HashMap<(String, String, String), Agg> = HashMap::new();
        for t in tasks {
            let ended = state::task_terminal(state::parse_task(&t.state));
            if !ended {
                continue;
            }
            let e = by_task.entry((t.namespace, t.name, t.version)).or_default();
            let took = t.completed_at.unwrap_or(t.created_at) - t.created_at;
            e.sum_ms += took;
            e.max_ms = e.max_ms.max(took);
            e.count += 1;
            e.errors += i64::from(failed_state(&t.state));
            e.last = e.last.max(t.completed_at.unwrap_or(t.created_at));
            e.steps += t.steps;
        }
        let mut slow_tasks: Vec<_> = by_task.into_iter().filter(|(_, a)| a.count >= min_executions).collect();
        slow_tasks.sort_by(|x, y| avg(&y.1).total_cmp(&avg(&x.1)));
        let slow_tasks = slow_tasks
            .into_iter()
            .take(limit)
            .map(|((ns, name, version), a)| pb::SlowTaskInfo {
                namespace_name: ns,
                task_name: name,
                version,
                average_duration_seconds: avg(&a),
                #[allow(clippy::cast_precision_loss)]
                max_duration_seconds: a.max_ms as f64 / 1000.0,
                execution_count: a.count,
                #[allow(clippy::cast_precision_loss)]
                average_step_count: a.steps as f64 / a.count.max(1) as f64,
                error_count: a.errors,
                error_rate: pct(a.errors, a.count),
                last_executed_at: Some(convert::rfc3339(a.last)),
            })
            .collect();
        let health = system_health(&self.api).await?;
        let ready = self.api.engine.ready_steps.load(Ordering::Relaxed);
        if ready > 0 {
            recommendations.push(format!(
                "{ready} ready steps wait for a worker: add workers or raise their concurrency"
            ));
        }
        if self.api.engine.workers.load(Ordering::Relaxed) == 0 {
            recommendations.push("no workers are connected: nothing can run".into());
        }
        let pending_dlq = store.pending_dlq_tasks().await.map_err(internal)?.len();
        if pending_dlq > 0 {
            recommendations.push(format!("{pending_dlq} DLQ entries await investigation"));
        }
        let (used, _, max) = store.pool_usage();
        Ok(Response::new(pb::GetBottleneckAnalysisResponse {
            slow_steps,
            slow_tasks,
            resource_utilization: Some(pb::ResourceUtilization {
                database_pool_utilization: pct(i64::from(used), i64::from(max)),
                system_health: Some(health),
            }),
            recommendations,
        }))
    }
}

async fn system_health(api: &Api) -> Result<pb::SystemHealthCounts, Status> {
    let tasks = api.store.task_state_counts().await.map_err(internal)?;
    let steps = api.store.step_state_counts().await.map_err(internal)?;
    let t = |s: TaskState| tasks.get(state::task_name(s)).copied().unwrap_or(0);
    let s = |st: StepState| steps.get(state::step_name(st)).copied().unwrap_or(0);
    Ok(pb::SystemHealthCounts {
        pending_tasks: t(TaskState::Pending),
        initializing_tasks: t(TaskState::Initializing),
        enqueuing_steps_tasks: t(TaskState::EnqueuingSteps),
        steps_in_process_tasks: t(TaskState::StepsInProcess),
        evaluating_results_tasks: t(TaskState::EvaluatingResults),
        waiting_for_dependencies_tasks: t(TaskState::WaitingForDependencies),
        waiting_for_retry_tasks: t(TaskState::WaitingForRetry),
        blocked_by_failures_tasks: t(TaskState::BlockedByFailures),
        complete_tasks: t(TaskState::Complete),
        error_tasks: t(TaskState::Error),
        cancelled_tasks: t(TaskState::Cancelled),
        resolved_manually_tasks: t(TaskState::ResolvedManually),
        total_tasks: tasks.values().sum(),
        pending_steps: s(StepState::Pending),
        enqueued_steps: s(StepState::Enqueued),
        in_progress_steps: s(StepState::InProgress),
        enqueued_for_orchestration_steps: s(StepState::EnqueuedForOrchestration),
        enqueued_as_error_for_orchestration_steps: s(StepState::EnqueuedAsErrorForOrchestration),
        waiting_for_retry_steps: s(StepState::WaitingForRetry),
        complete_steps: s(StepState::Complete),
        error_steps: s(StepState::Error),
        cancelled_steps: s(StepState::Cancelled),
        resolved_manually_steps: s(StepState::ResolvedManually),
        total_steps: steps.values().sum(),
    })
}

#[tonic::async_trait]
impl DlqService for Ops {
    async fn list_entries(
        &self,
        request: Request<pb::ListDlqEntriesRequest>,
    ) -> Result<Response<pb::ListDlqEntriesResponse>, Status> {
        let r = request.into_inner();
        let status = match r.resolution_status {
            None => None,
            Some(raw) => match pb::DlqResolutionStatus::try_from(raw) {
                Ok(s) => dlq_status_name(s),
                Err(_) => return Err(Status::invalid_argument(format!("resolution_status: {raw} is unknown"))),
            },
        };
        let limit = limit(r.limit, 50, 1000, "limit")?;
        let offset = i64::from(r.offset.unwrap_or(0));
        if offset < 0 {
            return Err(Status::invalid_argument("offset must not be negative"));
        }
        let rows = self.api.store.dlq_entries(status, limit, offset).await.map_err(|e| {
            tracing::error!(error = %e, "listing DLQ entries");
            Status::internal("Failed to list DLQ entries")
        })?;
        Ok(Response::new(pb::ListDlqEntriesResponse {
            entries: rows.into_iter().map(dlq_entry).collect(),
        }))
    }

    async fn get_entry_by_task(
        &self,
        request: Request<pb::GetDlqEntryByTaskRequest>,
    ) -> Result<Response<pb::GetDlqEntryByTaskResponse>, Status> {
        let task = parse_uuid("task_uuid", &request.into_inner().task_uuid)?;
        let entry = self
            .api
            .store
            .dlq_for_task(&task)
            .await
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("DLQ entry not found for task {task}")))?;
        Ok(Response::new(pb::GetDlqEntryByTaskResponse {
            entry: Some(dlq_entry(entry)),
        }))
    }

    async fn update_investigation(
        &self,
        request: Request<pb::UpdateDlqInvestigationRequest>,
    ) -> Result<Response<pb::UpdateDlqInvestigationResponse>, Status> {
        let principal = request
            .extensions()
            .get::<cairn_service::auth::Principal>()
            .map(|p| format!("key:{} ({})", p.key_id, p.name));
        let r = request.into_inner();
        let uuid = parse_uuid("dlq_entry_uuid", &r.dlq_entry_uuid)?;
        let status = match r.resolution_status {
            None => None,
            Some(raw) => match pb::DlqResolutionStatus::try_from(raw) {
                Ok(s) => dlq_status_name(s),
                Err(_) => return Err(Status::invalid_argument(format!("resolution_status: {raw} is unknown"))),
            },
        };
        // With keys on, the resolver is the caller; without, what the client says.
        let resolved_by = principal.or(r.resolved_by.filter(|s| !s.is_empty()));
        let metadata = r.metadata.as_ref().map(|m| convert::from_struct(m).to_string());
        let update = DlqUpdate {
            dlq_entry_uuid: uuid.clone(),
            status: status.map(str::to_owned),
            notes: r.resolution_notes,
            resolved_by,
            metadata,
            at: now_ms(),
        };
        self.api
            .engine
            .ask(|reply| Command::Investigate(Box::new(update), reply))
            .await?;
        Ok(Response::new(pb::UpdateDlqInvestigationResponse {
            success: true,
            message: "Investigation status updated successfully".into(),
            dlq_entry_uuid: uuid,
        }))
    }

    async fn get_stats(
        &self,
        _request: Request<pb::GetDlqStatsRequest>,
    ) -> Result<Response<pb::GetDlqStatsResponse>, Status> {
        let rows = self.api.store.all_dlq().await.map_err(internal)?;
        let mut by_reason: Vec<(String, Vec<DlqRow>)> = Vec::new();
        for row in rows {
            match by_reason.iter_mut().find(|(r, _)| r == &row.reason) {
                Some((_, list)) => list.push(row),
                None => by_reason.push((row.reason.clone(), vec![row])),
            }
        }
        let stats = by_reason
            .into_iter()
            .map(|(reason, rows)| {
                let count =
                    |s: &str| i64::try_from(rows.iter().filter(|r| r.resolution_status == s).count()).unwrap_or(0);
                let resolved: Vec<i64> = rows
                    .iter()
                    .filter_map(|r| r.resolution_at.map(|at| at - r.created_at))
                    .collect();
                #[allow(clippy::cast_precision_loss)]
                let avg = (!resolved.is_empty())
                    .then(|| resolved.iter().sum::<i64>() as f64 / resolved.len() as f64 / 60_000.0);
                pb::DlqStats {
                    dlq_reason: dlq_reason(&reason) as i32,
                    total_entries: i64::try_from(rows.len()).unwrap_or(0),
                    pending: count("pending"),
                    manually_resolved: count("manually_resolved"),
                    permanent_failures: count("permanently_failed"),
                    cancelled: count("cancelled"),
                    oldest_entry: rows.iter().map(|r| r.created_at).min().map(convert::ts),
                    newest_entry: rows.iter().map(|r| r.created_at).max().map(convert::ts),
                    avg_resolution_time_minutes: avg,
                }
            })
            .collect();
        Ok(Response::new(pb::GetDlqStatsResponse { stats }))
    }

    async fn get_investigation_queue(
        &self,
        request: Request<pb::GetDlqInvestigationQueueRequest>,
    ) -> Result<Response<pb::GetDlqInvestigationQueueResponse>, Status> {
        let limit = usize::try_from(limit(request.into_inner().limit, 100, 1000, "limit")?).unwrap_or(100);
        let now = now_ms();
        let rows = self
            .api
            .store
            .dlq_entries(Some("pending"), i64::MAX / 2, 0)
            .await
            .map_err(internal)?;
        let mut entries = Vec::with_capacity(rows.len());
        for d in rows {
            let task = self.api.store.task(&d.task_uuid).await.map_err(internal)?;
            #[allow(clippy::cast_precision_loss)]
            let minutes = (now - d.created_at) as f64 / 60_000.0;
            entries.push(pb::DlqInvestigationQueueEntry {
                priority_score: priority_score(&d.reason, minutes),
                dlq_entry_uuid: d.dlq_entry_uuid,
                task_uuid: d.task_uuid,
                original_state: d.original_state,
                dlq_reason: dlq_reason(&d.reason) as i32,
                dlq_timestamp: Some(convert::ts(d.created_at)),
                minutes_in_dlq: (minutes * 100.0).round() / 100.0,
                namespace_name: task.as_ref().map(|t| t.namespace.clone()),
                task_name: task.as_ref().map(|t| t.name.clone()),
                current_state: task.as_ref().map(|t| t.state.clone()),
                time_in_state_minutes: task
                    .as_ref()
                    .and_then(|t| i32::try_from((now - t.state_since) / 60_000).ok()),
            });
        }
        entries.sort_by(|a, b| b.priority_score.total_cmp(&a.priority_score));
        entries.truncate(limit);
        Ok(Response::new(pb::GetDlqInvestigationQueueResponse { entries }))
    }

    async fn get_staleness_monitoring(
        &self,
        request: Request<pb::GetStalenessMonitoringRequest>,
    ) -> Result<Response<pb::GetStalenessMonitoringResponse>, Status> {
        let limit = usize::try_from(limit(request.into_inner().limit, 100, 1000, "limit")?).unwrap_or(100);
        let now = now_ms();
        let threshold = self.staleness_minutes.max(1);
        let mut entries: Vec<pb::StalenessMonitoringEntry> = self
            .api
            .store
            .active_tasks()
            .await
            .map_err(internal)?
            .into_iter()
            .map(|t| {
                let in_state = (now - t.state_since) / 60_000;
                let health = if in_state >= threshold {
                    pb::StalenessHealthStatus::Stale
                } else if in_state * 2 >= threshold {
                    pb::StalenessHealthStatus::Warning
                } else {
                    pb::StalenessHealthStatus::Healthy
                };
                pb::StalenessMonitoringEntry {
                    task_uuid: t.task_uuid,
                    namespace_name: Some(t.namespace),
                    task_name: Some(t.name),
                    current_state: t.state,
                    time_in_state_minutes: i32::try_from(in_state).unwrap_or(i32::MAX),
                    task_age_minutes: i32::try_from((now - t.created_at) / 60_000).unwrap_or(i32::MAX),
                    staleness_threshold_minutes: i32::try_from(threshold).unwrap_or(i32::MAX),
                    health_status: health as i32,
                    priority: t.priority.and_then(|p| i32::try_from(p).ok()).unwrap_or(0),
                }
            })
            .collect();
        entries.sort_by_key(|e| std::cmp::Reverse(e.time_in_state_minutes));
        entries.truncate(limit);
        Ok(Response::new(pb::GetStalenessMonitoringResponse { entries }))
    }
}

fn check(status: &str, message: Option<String>, started: Instant) -> pb::HealthCheck {
    pb::HealthCheck {
        status: status.into(),
        message,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

/// The four checks every health answer is built from.
struct Checks {
    database: pb::HealthCheck,
    engine: pb::HealthCheck,
    workers: pb::HealthCheck,
    channel: pb::HealthCheck,
    breaker: pb::HealthCheck,
    pool: pb::HealthCheck,
    queue: pb::HealthCheck,
    db_ok: bool,
}

impl Ops {
    async fn checks(&self) -> Checks {
        let started = Instant::now();
        let db = self.api.store.ping().await;
        let db_ok = db.is_ok();
        let database = match db {
            Ok(()) => check("healthy", None, started),
            Err(e) => check("unhealthy", Some(format!("database: {e}")), started),
        };
        let started = Instant::now();
        let engine_alive = !self.api.engine.commands.is_closed();
        let engine = if engine_alive {
            check("healthy", Some("the engine takes commands".into()), started)
        } else {
            check("unhealthy", Some("the engine stopped".into()), started)
        };
        let workers_n = self.api.engine.workers.load(Ordering::Relaxed);
        let workers = if workers_n > 0 {
            check("healthy", Some(format!("{workers_n} workers connected")), started)
        } else {
            check("degraded", Some("no workers connected".into()), started)
        };
        let capacity = self.api.engine.commands.max_capacity();
        let free = self.api.engine.commands.capacity();
        let used = capacity.saturating_sub(free);
        let saturation = pct(i64::try_from(used).unwrap_or(0), i64::try_from(capacity).unwrap_or(1));
        let channel = check(
            if saturation >= 90.0 { "degraded" } else { "healthy" },
            Some(format!("engine channel {saturation}% full")),
            started,
        );
        let (in_use, _, max) = self.api.store.pool_usage();
        let pool_pct = pct(i64::from(in_use), i64::from(max));
        let pool = check(
            if pool_pct >= 90.0 { "degraded" } else { "healthy" },
            Some(format!("{in_use}/{max} connections in use")),
            started,
        );
        let ready = self.api.engine.ready_steps.load(Ordering::Relaxed);
        let bound = self.api.engine.config.max_ready_steps;
        let queue = check(
            if ready >= bound { "degraded" } else { "healthy" },
            Some(format!("{ready} ready steps (bound {bound})")),
            started,
        );
        let breaker = check(
            "healthy",
            Some("no circuit breaker: database errors fail calls directly".into()),
            started,
        );
        Checks {
            database,
            engine,
            workers,
            channel,
            breaker,
            pool,
            queue,
            db_ok,
        }
    }

    fn info(&self) -> pb::HealthInfo {
        let (in_use, idle, max) = self.api.store.pool_usage();
        let detail = pb::PoolDetail {
            active_connections: in_use,
            idle_connections: idle,
            max_connections: max,
            utilization_percent: pct(i64::from(in_use), i64::from(max)),
            ..Default::default()
        };
        pb::HealthInfo {
            version: env!("CARGO_PKG_VERSION").into(),
            environment: self.environment.clone(),
            operational_state: if self.api.engine.commands.is_closed() {
                "stopping".into()
            } else {
                "normal".into()
            },
            web_database_pool_size: self.max_connections,
            orchestration_database_pool_size: self.max_connections,
            circuit_breaker_state: "closed".into(),
            pool_utilization: Some(pb::PoolUtilizationInfo {
                tasker_pool: Some(detail),
                pgmq_pool: Some(detail),
            }),
        }
    }
}

fn overall(checks: &[&pb::HealthCheck]) -> &'static str {
    if checks.iter().any(|c| c.status == "unhealthy") {
        "unhealthy"
    } else if checks.iter().any(|c| c.status == "degraded") {
        "degraded"
    } else {
        "healthy"
    }
}

#[tonic::async_trait]
impl HealthService for Ops {
    async fn check_health(&self, _request: Request<pb::HealthRequest>) -> Result<Response<pb::HealthResponse>, Status> {
        let c = self.checks().await;
        Ok(Response::new(pb::HealthResponse {
            status: overall(&[&c.database, &c.engine, &c.workers]).into(),
            timestamp: convert::rfc3339(now_ms()),
        }))
    }

    async fn check_liveness(
        &self,
        _request: Request<pb::LivenessRequest>,
    ) -> Result<Response<pb::HealthResponse>, Status> {
        Ok(Response::new(pb::HealthResponse {
            status: "healthy".into(),
            timestamp: convert::rfc3339(now_ms()),
        }))
    }

    async fn check_readiness(
        &self,
        _request: Request<pb::ReadinessRequest>,
    ) -> Result<Response<pb::ReadinessResponse>, Status> {
        let c = self.checks().await;
        if !c.db_ok || c.engine.status != "healthy" {
            return Err(Status::unavailable("Service is not ready"));
        }
        Ok(Response::new(pb::ReadinessResponse {
            status: overall(&[&c.database, &c.engine, &c.workers]).into(),
            timestamp: convert::rfc3339(now_ms()),
            info: Some(self.info()),
            checks: Some(pb::ReadinessChecks {
                web_database: Some(c.database.clone()),
                orchestration_database: Some(c.database),
                circuit_breaker: Some(c.breaker),
                orchestration_system: Some(c.workers),
                command_processor: Some(c.engine),
            }),
        }))
    }

    async fn check_detailed_health(
        &self,
        _request: Request<pb::DetailedHealthRequest>,
    ) -> Result<Response<pb::DetailedHealthResponse>, Status> {
        let c = self.checks().await;
        let status = overall(&[&c.database, &c.engine, &c.workers, &c.channel, &c.pool, &c.queue]);
        Ok(Response::new(pb::DetailedHealthResponse {
            status: status.into(),
            timestamp: convert::rfc3339(now_ms()),
            info: Some(self.info()),
            checks: Some(pb::DetailedHealthChecks {
                web_database: Some(c.database.clone()),
                orchestration_database: Some(c.database),
                circuit_breaker: Some(c.breaker),
                orchestration_system: Some(c.workers),
                command_processor: Some(c.engine),
                pool_utilization: Some(c.pool),
                queue_depth: Some(c.queue),
                channel_saturation: Some(c.channel),
            }),
        }))
    }
}

#[tonic::async_trait]
impl ConfigService for Ops {
    async fn get_config(
        &self,
        _request: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigResponse>, Status> {
        Ok(Response::new(pb::GetConfigResponse {
            metadata: Some(pb::ConfigMetadata {
                timestamp: Some(convert::ts(now_ms())),
                environment: self.environment.clone(),
                version: env!("CARGO_PKG_VERSION").into(),
            }),
            auth: Some(pb::SafeAuthConfig {
                enabled: self.auth_enabled,
                verification_method: if self.auth_enabled { "api_key" } else { "none" }.into(),
                jwt_issuer: String::new(),
                jwt_audience: String::new(),
                api_key_header: "X-API-Key".into(),
                // Keys live in cairn-auth; this service holds none.
                api_key_count: 0,
                strict_validation: true,
                allowed_algorithms: Vec::new(),
            }),
            circuit_breakers: Some(pb::SafeCircuitBreakerConfig {
                enabled: false,
                failure_threshold: 0,
                timeout_seconds: 0,
                success_threshold: 0,
            }),
            database_pools: Some(pb::SafeDatabasePoolConfig {
                web_api_pool_size: self.max_connections,
                web_api_max_connections: self.max_connections,
            }),
            deployment_mode: "EventDrivenOnly".into(),
            messaging: Some(pb::SafeMessagingConfig {
                backend: "grpc_stream".into(),
                queues: vec!["cairn.orchestrator.v1.WorkerService/Connect".into()],
            }),
        }))
    }
}
