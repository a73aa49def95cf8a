//! Rows to tasker.v1 messages, and the value conventions WIRE-tasker.md
//! lists: JSON objects travel as `Struct` (anything else leaves the field
//! unset), core entities carry `Timestamp`s, summaries RFC 3339 strings.

use std::collections::{HashMap, HashSet};

use cairn_client::json::to_struct_map;
pub use cairn_client::json::{from_struct, from_value, text_to_struct, to_struct, to_value};
use cairn_client::names::{rfc3339_ms, timestamp_from_ms};
use cairn_proto::{Timestamp, tasker::v1 as pb};
use serde_json::{Map, Value};
use tonic::Status;

use crate::{
    state::{self, StepState},
    store::{StateCounts, StepRow, TaskRow},
};

/// A uuid field: INVALID_ARGUMENT "Invalid UUID" unless it parses; the
/// canonical hyphenated lower-case form.
pub fn parse_uuid(field: &str, text: &str) -> Result<String, Status> {
    uuid::Uuid::parse_str(text.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|e| Status::invalid_argument(format!("Invalid UUID: {field} {text:?}: {e}")))
}

pub fn ts(ms: i64) -> Timestamp {
    timestamp_from_ms(ms)
}

/// How far along a task is, from its step counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub total: i64,
    pub pending: i64,
    pub in_progress: i64,
    pub completed: i64,
    pub failed: i64,
    pub ready: i64,
}

impl Progress {
    /// From counts by state name (`ready` counted separately).
    pub fn from_counts(counts: Option<&StateCounts>, ready: i64) -> Progress {
        let get = |s: StepState| counts.and_then(|c| c.get(state::step_name(s))).copied().unwrap_or(0);
        let total = counts.map_or(0, |c| c.values().sum());
        Progress {
            total,
            pending: get(StepState::Pending) + get(StepState::WaitingForRetry),
            in_progress: get(StepState::Enqueued)
                + get(StepState::InProgress)
                + get(StepState::EnqueuedForOrchestration)
                + get(StepState::EnqueuedAsErrorForOrchestration),
            completed: get(StepState::Complete) + get(StepState::ResolvedManually),
            failed: get(StepState::Error),
            ready,
        }
    }

    pub fn percentage(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            #[allow(clippy::cast_precision_loss)]
            let p = self.completed as f64 * 100.0 / self.total as f64;
            (p * 100.0).round() / 100.0
        }
    }

    /// tasker's execution status, recommended action and health strings.
    pub fn status(&self, task_state: &str) -> (&'static str, &'static str, &'static str) {
        if self.total > 0 && self.completed == self.total {
            ("all_complete", "finalize_task", "healthy")
        } else if self.failed > 0 {
            ("blocked_by_failures", "handle_failures", "blocked")
        } else if self.ready > 0 {
            ("has_ready_steps", "execute_ready_steps", "healthy")
        } else if self.in_progress > 0 {
            ("processing", "wait_for_completion", "healthy")
        } else if task_state == "waiting_for_retry" {
            ("waiting_for_dependencies", "wait_for_dependencies", "recovering")
        } else {
            ("waiting_for_dependencies", "wait_for_dependencies", "healthy")
        }
    }
}

/// Counts by state of one task's steps, and how many are ready to run.
pub fn progress_of(steps: &[StepRow], edges: &[(String, String)]) -> Progress {
    let mut counts: StateCounts = HashMap::new();
    for s in steps {
        *counts.entry(s.state.clone()).or_insert(0) += 1;
    }
    let ready = steps
        .iter()
        .filter(|s| s.state == state::step_name(StepState::Pending))
        .filter(|s| parents_of(s, steps, edges).all(|p| state::step_done(state::parse_step(&p.state))))
        .count();
    Progress::from_counts(Some(&counts), i64::try_from(ready).unwrap_or(0))
}

fn parents_of<'a>(
    step: &'a StepRow,
    steps: &'a [StepRow],
    edges: &'a [(String, String)],
) -> impl Iterator<Item = &'a StepRow> + 'a {
    edges
        .iter()
        .filter(move |(_, c)| c == &step.step_uuid)
        .filter_map(move |(p, _)| steps.iter().find(|s| &s.step_uuid == p))
}

pub fn task_state(row: &TaskRow) -> pb::TaskState {
    state::parse_task(&row.state)
}

/// The tasker.v1 Task.
pub fn task(row: &TaskRow, progress: &Progress) -> pb::Task {
    let context: Value = serde_json::from_str(&row.context).unwrap_or_else(|_| Value::Object(Map::new()));
    let (execution, action, health) = progress.status(&row.state);
    pb::Task {
        task_uuid: row.task_uuid.clone(),
        name: row.name.clone(),
        namespace: row.namespace.clone(),
        version: row.version.clone(),
        state: task_state(row) as i32,
        created_at: Some(ts(row.created_at)),
        updated_at: Some(ts(row.updated_at)),
        completed_at: row.completed_at.map(ts),
        context: to_struct(&context),
        initiator: row.initiator.clone(),
        source_system: row.source_system.clone(),
        reason: row.reason.clone(),
        priority: row.priority.and_then(|p| i32::try_from(p).ok()),
        tags: row.tags.clone(),
        correlation_id: row.correlation_id.clone(),
        parent_correlation_id: row.parent_correlation_id.clone(),
        total_steps: progress.total,
        pending_steps: progress.pending,
        in_progress_steps: progress.in_progress,
        completed_steps: progress.completed,
        failed_steps: progress.failed,
        ready_steps: progress.ready,
        execution_status: execution.into(),
        recommended_action: action.into(),
        completion_percentage: progress.percentage(),
        health_status: health.into(),
    }
}

/// The tasker.v1 Step.
pub fn step(row: &StepRow, steps: &[StepRow], edges: &[(String, String)]) -> pb::Step {
    let state = state::parse_step(&row.state);
    let parents: Vec<&StepRow> = parents_of(row, steps, edges).collect();
    let completed_parents = parents
        .iter()
        .filter(|p| state::step_done(state::parse_step(&p.state)))
        .count();
    let satisfied = completed_parents == parents.len();
    pb::Step {
        step_uuid: row.step_uuid.clone(),
        task_uuid: row.task_uuid.clone(),
        name: row.name.clone(),
        state: state as i32,
        created_at: Some(ts(row.created_at)),
        updated_at: Some(ts(row.updated_at)),
        completed_at: row.completed_at.map(ts),
        results: text_to_struct(row.results.as_deref()),
        dependencies_satisfied: satisfied,
        retry_eligible: row.retryable && row.attempts < row.max_attempts,
        ready_for_execution: state == StepState::Pending && satisfied,
        total_parents: i32::try_from(parents.len()).unwrap_or(i32::MAX),
        completed_parents: i32::try_from(completed_parents).unwrap_or(i32::MAX),
        attempts: i32::try_from(row.attempts).unwrap_or(i32::MAX),
        max_attempts: i32::try_from(row.max_attempts).unwrap_or(i32::MAX),
        last_failure_at: row.last_failure_at.map(ts),
        next_retry_at: row.next_retry_at.map(ts),
        last_attempted_at: row.last_attempted_at.map(ts),
        backoff_request_seconds: row.backoff_request_ms.and_then(|ms| i32::try_from(ms / 1000).ok()),
    }
}

/// The task's context: inputs, outputs (each completed step's result by
/// step name), and both merged (outputs over inputs).
pub fn task_context(row: &TaskRow, steps: &[StepRow]) -> pb::TaskContext {
    let inputs: Value = serde_json::from_str(&row.context).unwrap_or_else(|_| Value::Object(Map::new()));
    let mut outputs = Map::new();
    for s in steps {
        if let Some(r) = s.results.as_deref().and_then(|t| serde_json::from_str::<Value>(t).ok()) {
            outputs.insert(s.name.clone(), r);
        }
    }
    let mut merged = inputs.as_object().cloned().unwrap_or_default();
    for (k, v) in &outputs {
        merged.insert(k.clone(), v.clone());
    }
    pb::TaskContext {
        inputs: to_struct(&inputs),
        outputs: Some(to_struct_map(&outputs)),
        merged: Some(to_struct_map(&merged)),
    }
}

/// RFC 3339 text for unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    rfc3339_ms(ms)
}

/// Distinct values, in first-seen order.
pub fn distinct(values: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    values.iter().filter(|v| seen.insert(v.as_str())).cloned().collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn uuids_are_canonical_or_refused() {
        let u = "6F9619FF-8B86-D011-B42D-00C04FC964FF";
        assert_eq!(parse_uuid("task_uuid", u).unwrap(), u.to_lowercase());
        let e = parse_uuid("task_uuid", "not-a-uuid").unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("Invalid UUID"));
    }
}
