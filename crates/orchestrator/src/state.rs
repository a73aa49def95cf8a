//! The task and step state machines (WIRE.md §3, tasker's transitions): the
//! one place that says which transition is legal. The engine records every
//! state change through [`task_allowed`] / [`step_allowed`]; an illegal one is
//! a bug (it panics in debug builds and is refused, logged, in release).

use std::collections::VecDeque;

pub use cairn_proto::tasker::v1::{StepState, TaskState};

use StepState as S;
use TaskState as T;

/// Every task state but UNSPECIFIED.
pub const TASK_STATES: [TaskState; 12] = [
    T::Pending,
    T::Initializing,
    T::EnqueuingSteps,
    T::StepsInProcess,
    T::EvaluatingResults,
    T::WaitingForDependencies,
    T::WaitingForRetry,
    T::BlockedByFailures,
    T::Complete,
    T::Error,
    T::Cancelled,
    T::ResolvedManually,
];

/// Every step state but UNSPECIFIED.
pub const STEP_STATES: [StepState; 10] = [
    S::Pending,
    S::Enqueued,
    S::InProgress,
    S::EnqueuedForOrchestration,
    S::EnqueuedAsErrorForOrchestration,
    S::WaitingForRetry,
    S::Complete,
    S::Error,
    S::Cancelled,
    S::ResolvedManually,
];

/// Whether a task may move from `from` to `to`.
pub fn task_allowed(from: TaskState, to: TaskState) -> bool {
    if to == T::Cancelled {
        return !task_terminal(from) && from != T::Unspecified;
    }
    matches!(
        (from, to),
        (T::Pending, T::Initializing)
            | (T::Initializing, T::EnqueuingSteps | T::Complete | T::WaitingForDependencies)
            | (T::EnqueuingSteps, T::StepsInProcess | T::Error)
            | (
                T::StepsInProcess,
                T::EvaluatingResults | T::WaitingForRetry | T::Complete | T::Error
            )
            | (
                T::EvaluatingResults,
                T::Complete | T::EnqueuingSteps | T::WaitingForDependencies | T::BlockedByFailures
            )
            | (T::WaitingForDependencies, T::EvaluatingResults)
            | (T::WaitingForRetry, T::EnqueuingSteps)
            | (T::BlockedByFailures, T::Error | T::ResolvedManually)
            // An operator resolved the step that failed it: the task runs on.
            | (T::Error, T::Pending)
    )
}

/// Whether a task in this state has ended (ERROR may still be reopened by
/// resolving its failed step).
pub fn task_terminal(state: TaskState) -> bool {
    matches!(state, T::Complete | T::Error | T::Cancelled | T::ResolvedManually)
}

/// Whether a step may move from `from` to `to`.
pub fn step_allowed(from: StepState, to: StepState) -> bool {
    if to == S::Cancelled {
        return !step_terminal(from) && from != S::Error && from != S::Unspecified;
    }
    matches!(
        (from, to),
        // Assigned to a worker.
        (S::Pending, S::Enqueued)
            // The worker started it.
            | (S::Enqueued, S::InProgress)
            // A result: success or failure, handed back to orchestration.
            | (S::InProgress, S::EnqueuedForOrchestration | S::EnqueuedAsErrorForOrchestration)
            // The lease ended (or the worker left) before it started.
            | (S::Enqueued, S::EnqueuedAsErrorForOrchestration)
            | (S::EnqueuedForOrchestration, S::Complete)
            | (S::EnqueuedAsErrorForOrchestration, S::WaitingForRetry | S::Error)
            | (S::WaitingForRetry, S::Pending)
            // Operator actions on a failed step.
            | (S::Error, S::Pending | S::ResolvedManually | S::Complete)
    )
}

/// Whether a step in this state never runs again on its own.
pub fn step_terminal(state: StepState) -> bool {
    matches!(state, S::Complete | S::Cancelled | S::ResolvedManually)
}

/// Whether a step in this state satisfies its children's dependency.
pub fn step_done(state: StepState) -> bool {
    matches!(state, S::Complete | S::ResolvedManually)
}

/// Whether a worker holds (or is handing back) an attempt of the step.
pub fn step_in_flight(state: StepState) -> bool {
    matches!(
        state,
        S::Enqueued | S::InProgress | S::EnqueuedForOrchestration | S::EnqueuedAsErrorForOrchestration
    )
}

/// The legal states a task passes through from `from` to reach `to` (both
/// ends excluded / included: the returned path ends with `to`), the shortest
/// one; `None` when there is none. Cancellation is never a waypoint.
pub fn task_route(from: TaskState, to: TaskState) -> Option<Vec<TaskState>> {
    if from == to {
        return Some(Vec::new());
    }
    let mut previous: [Option<TaskState>; 13] = [None; 13];
    let mut queue = VecDeque::from([from]);
    let index = |s: TaskState| s as usize;
    while let Some(at) = queue.pop_front() {
        for next in TASK_STATES {
            if next == T::Cancelled && to != T::Cancelled {
                continue;
            }
            if next == from || previous[index(next)].is_some() || !task_allowed(at, next) {
                continue;
            }
            previous[index(next)] = Some(at);
            if next == to {
                let mut path = vec![to];
                let mut cursor = at;
                while cursor != from {
                    path.push(cursor);
                    cursor = previous[index(cursor)]?;
                }
                path.reverse();
                return Some(path);
            }
            queue.push_back(next);
        }
    }
    None
}

/// tasker's snake_case name of a task state (used where the wire carries
/// strings).
pub fn task_name(state: TaskState) -> &'static str {
    match state {
        T::Unspecified => "unspecified",
        T::Pending => "pending",
        T::Initializing => "initializing",
        T::EnqueuingSteps => "enqueuing_steps",
        T::StepsInProcess => "steps_in_process",
        T::EvaluatingResults => "evaluating_results",
        T::WaitingForDependencies => "waiting_for_dependencies",
        T::WaitingForRetry => "waiting_for_retry",
        T::BlockedByFailures => "blocked_by_failures",
        T::Complete => "complete",
        T::Error => "error",
        T::Cancelled => "cancelled",
        T::ResolvedManually => "resolved_manually",
    }
}

/// tasker's snake_case name of a step state.
pub fn step_name(state: StepState) -> &'static str {
    match state {
        S::Unspecified => "unspecified",
        S::Pending => "pending",
        S::Enqueued => "enqueued",
        S::InProgress => "in_progress",
        S::EnqueuedForOrchestration => "enqueued_for_orchestration",
        S::EnqueuedAsErrorForOrchestration => "enqueued_as_error_for_orchestration",
        S::WaitingForRetry => "waiting_for_retry",
        S::Complete => "complete",
        S::Error => "error",
        S::Cancelled => "cancelled",
        S::ResolvedManually => "resolved_manually",
    }
}

/// The task state a snake_case name means; UNSPECIFIED for unknown names.
pub fn parse_task(name: &str) -> TaskState {
    TASK_STATES
        .into_iter()
        .find(|&s| task_name(s) == name)
        .unwrap_or(T::Unspecified)
}

/// The step state a snake_case name means; UNSPECIFIED for unknown names.
pub fn parse_step(name: &str) -> StepState {
    STEP_STATES
        .into_iter()
        .find(|&s| step_name(s) == name)
        .unwrap_or(S::Unspecified)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn names_round_trip_and_unknown_is_unspecified() {
        for s in TASK_STATES {
            assert_eq!(parse_task(task_name(s)), s);
        }
        for s in STEP_STATES {
            assert_eq!(parse_step(step_name(s)), s);
        }
        assert_eq!(parse_task("done"), T::Unspecified);
        assert_eq!(parse_step(""), S::Unspecified);
    }

    /// tasker's task diagram, edge by edge; everything else is refused.
    #[test]
    fn task_rules() {
        let legal = [
            (T::Pending, T::Initializing),
            (T::Initializing, T::EnqueuingSteps),
            (T::Initializing, T::Complete),
            (T::Initializing, T::WaitingForDependencies),
            (T::EnqueuingSteps, T::StepsInProcess),
            (T::EnqueuingSteps, T::Error),
            (T::StepsInProcess, T::EvaluatingResults),
            (T::StepsInProcess, T::WaitingForRetry),
            (T::StepsInProcess, T::Complete),
            (T::StepsInProcess, T::Error),
            (T::EvaluatingResults, T::Complete),
            (T::EvaluatingResults, T::EnqueuingSteps),
            (T::EvaluatingResults, T::WaitingForDependencies),
            (T::EvaluatingResults, T::BlockedByFailures),
            (T::WaitingForDependencies, T::EvaluatingResults),
            (T::WaitingForRetry, T::EnqueuingSteps),
            (T::BlockedByFailures, T::Error),
            (T::BlockedByFailures, T::ResolvedManually),
            (T::Error, T::Pending),
        ];
        let cancellable = [
            T::Pending,
            T::Initializing,
            T::EnqueuingSteps,
            T::StepsInProcess,
            T::EvaluatingResults,
            T::WaitingForDependencies,
            T::WaitingForRetry,
            T::BlockedByFailures,
        ];
        for from in TASK_STATES {
            for to in TASK_STATES {
                let expected = legal.contains(&(from, to)) || (to == T::Cancelled && cancellable.contains(&from));
                assert_eq!(task_allowed(from, to), expected, "{from:?} -> {to:?}");
            }
        }
        for s in TASK_STATES {
            assert!(!task_allowed(T::Unspecified, s));
        }
    }

    #[test]
    fn step_rules() {
        let legal = [
            (S::Pending, S::Enqueued),
            (S::Enqueued, S::InProgress),
            (S::Enqueued, S::EnqueuedAsErrorForOrchestration),
            (S::InProgress, S::EnqueuedForOrchestration),
            (S::InProgress, S::EnqueuedAsErrorForOrchestration),
            (S::EnqueuedForOrchestration, S::Complete),
            (S::EnqueuedAsErrorForOrchestration, S::WaitingForRetry),
            (S::EnqueuedAsErrorForOrchestration, S::Error),
            (S::WaitingForRetry, S::Pending),
            (S::Error, S::Pending),
            (S::Error, S::ResolvedManually),
            (S::Error, S::Complete),
        ];
        let cancellable = [
            S::Pending,
            S::Enqueued,
            S::InProgress,
            S::EnqueuedForOrchestration,
            S::EnqueuedAsErrorForOrchestration,
            S::WaitingForRetry,
        ];
        for from in STEP_STATES {
            for to in STEP_STATES {
                let expected = legal.contains(&(from, to)) || (to == S::Cancelled && cancellable.contains(&from));
                assert_eq!(step_allowed(from, to), expected, "{from:?} -> {to:?}");
            }
        }
        // A completed step never runs again; an errored one only by an operator.
        for s in STEP_STATES {
            assert!(!step_allowed(S::Complete, s));
            assert!(!step_allowed(S::Cancelled, s));
        }
    }

    #[test]
    fn routes_are_legal_and_shortest() {
        for from in TASK_STATES {
            for to in TASK_STATES {
                if let Some(path) = task_route(from, to) {
                    let mut at = from;
                    for &next in &path {
                        assert!(task_allowed(at, next), "{at:?} -> {next:?} on {from:?} => {to:?}");
                        assert!(next != T::Cancelled || to == T::Cancelled);
                        at = next;
                    }
                    if from != to {
                        assert_eq!(path.last(), Some(&to));
                    }
                }
            }
        }
        assert_eq!(
            task_route(T::StepsInProcess, T::EnqueuingSteps).unwrap(),
            vec![T::EvaluatingResults, T::EnqueuingSteps]
        );
        assert_eq!(
            task_route(T::Pending, T::StepsInProcess).unwrap(),
            vec![T::Initializing, T::EnqueuingSteps, T::StepsInProcess]
        );
        assert_eq!(
            task_route(T::WaitingForDependencies, T::BlockedByFailures).unwrap(),
            vec![T::EvaluatingResults, T::BlockedByFailures]
        );
        // Nothing leaves a finished task but a reopened error.
        assert_eq!(task_route(T::Complete, T::Pending), None);
        assert_eq!(task_route(T::Cancelled, T::Pending), None);
        assert!(task_route(T::Error, T::StepsInProcess).is_some());
    }
}
