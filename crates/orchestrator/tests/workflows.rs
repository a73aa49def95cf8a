//! The demo workflows through real binaries (orchestrator + demo worker), on
//! SQLite and on Postgres: results, StreamTaskStatus against the audit,
//! retries and their backoff, the DLQ and ResolveStep unblocking a task,
//! cancel of a running task, duplicates, and ListTasks filters.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use cairn_client::names::ms_from_timestamp;
use cairn_orchestrator::state::{step_allowed, task_allowed};
use cairn_proto::tasker::v1::{self as pb, task_status_update::UpdateType};
use cairn_testkit::{TempDir, postgres_url, sqlite_url};
use common::*;
use serde_json::json;
use tonic::Code;

#[tokio::test]
async fn demo_workflows_on_sqlite() {
    let dir = TempDir::new("orch-sqlite");
    let db = sqlite_url(dir.path());
    scenario(&dir, &db).await;
}

#[tokio::test]
async fn demo_workflows_on_postgres() {
    let Some(db) = postgres_url().await else { return };
    let dir = TempDir::new("orch-pg");
    scenario(&dir, &db).await;
}

/// Checks an update stream: every consecutive task state and every step's
/// consecutive states are legal transitions, and it ends in `last`.
fn check_stream(updates: &[pb::TaskStatusUpdate], last: TaskState) -> (usize, usize) {
    let mut task = None;
    let mut steps: HashMap<String, StepState> = HashMap::new();
    let (mut task_changes, mut step_changes) = (0, 0);
    let mut previous_time = 0;
    for u in updates {
        let at = ms_from_timestamp(u.timestamp.as_ref().unwrap()).unwrap();
        assert!(at >= previous_time, "updates arrive in commit order");
        previous_time = at;
        match UpdateType::try_from(u.update_type).unwrap() {
            UpdateType::StepStateChange => {
                let s = u.step_update.as_ref().unwrap();
                let to = StepState::try_from(s.state).unwrap();
                if let Some(from) = steps.insert(s.step_uuid.clone(), to) {
                    assert!(step_allowed(from, to), "step {} went {from:?} -> {to:?}", s.name);
                } else {
                    assert_eq!(to, StepState::Pending, "a step starts pending");
                }
                step_changes += 1;
            }
            _ => {
                let to = TaskState::try_from(u.task_state.unwrap()).unwrap();
                if let Some(from) = task {
                    assert!(task_allowed(from, to), "task went {from:?} -> {to:?}");
                } else {
                    assert_eq!(to, TaskState::Pending, "a task starts pending");
                }
                task = Some(to);
                task_changes += 1;
            }
        }
    }
    assert_eq!(task, Some(last));
    (task_changes, step_changes)
}

async fn scenario(dir: &TempDir, db: &str) {
    let orch = start_orchestrator(dir.path(), db, &[]).await;
    let _worker = start_worker(dir.path(), &orch.addr, "w1", &[]);
    wait_workers(&orch, 1.0).await;
    let mut c = clients(&orch.addr).await;

    // Linear: 2^16 after four squarings; every transition streamed, in order,
    // and the stream matches the audit one for one.
    let linear = create(&mut c, "linear_workflow", json!({"even_number": 2})).await;
    assert!(uuid::Uuid::parse_str(&linear.correlation_id).is_ok());
    assert_eq!(linear.total_steps, 4);
    let updates = stream_all(&mut c, &linear.task_uuid).await;
    let (_, step_changes) = check_stream(&updates, TaskState::Complete);
    assert_eq!(
        step_result(&mut c, &linear.task_uuid, "linear_step_4").await,
        json!({"result": 65536})
    );
    let steps = get_task(&mut c, &linear.task_uuid).await.steps;
    let mut audited = 0;
    for s in &steps {
        assert_eq!(StepState::try_from(s.state).unwrap(), StepState::Complete);
        assert_eq!(s.attempts, 1);
        let a = audit(&mut c, &linear.task_uuid, &s.step_uuid).await;
        assert_eq!(
            a.iter().map(|r| r.to_state).collect::<Vec<_>>(),
            [
                StepState::Pending,
                StepState::Enqueued,
                StepState::InProgress,
                StepState::EnqueuedForOrchestration,
                StepState::Complete
            ]
            .map(|s| s as i32)
        );
        assert!(a.iter().filter(|r| r.execution_time_ms.is_some()).count() == 1);
        audited += a.len();
    }
    assert_eq!(step_changes, audited, "the stream carries every step transition");
    // Replay: subscribing after the end gets the same history.
    let replay = stream_all(&mut c, &linear.task_uuid).await;
    assert_eq!(replay.len(), updates.len());

    // Diamond: (n^2)^2 * (n^2)^2 = n^8; both branches ran after the start.
    let diamond = create(&mut c, "diamond_workflow", json!({"even_number": 3})).await;
    assert_eq!(finish(&mut c, &diamond.task_uuid).await, TaskState::Complete);
    assert_eq!(
        step_result(&mut c, &diamond.task_uuid, "diamond_end").await,
        json!({"result": 6561})
    );

    // The same template and context again is a duplicate; another context is not.
    let again = c
        .tasks
        .create_task(create_request("linear_workflow", json!({"even_number": 2})))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::AlreadyExists, "{again:?}");
    let mut keyed = tonic::Request::new(create_request("linear_workflow", json!({"even_number": 4})));
    keyed
        .metadata_mut()
        .insert("idempotency-key", "order-17".parse().unwrap());
    let first = c.tasks.create_task(keyed).await.unwrap().into_inner().task.unwrap();
    let mut keyed = tonic::Request::new(create_request("linear_workflow", json!({"even_number": 6})));
    keyed
        .metadata_mut()
        .insert("idempotency-key", "order-17".parse().unwrap());
    let second = c.tasks.create_task(keyed).await.unwrap_err();
    assert_eq!(second.code(), Code::AlreadyExists, "the key identifies the task");
    assert_eq!(finish(&mut c, &first.task_uuid).await, TaskState::Complete);
    assert_eq!(
        step_result(&mut c, &first.task_uuid, "linear_step_4").await,
        json!({"result": 4_294_967_296_i64})
    );

    // Failing: three attempts with exponential backoff (100 ms, then 200 ms),
    // then held in BLOCKED_BY_FAILURES with a DLQ entry.
    let failing = create(&mut c, "failing_workflow", json!({"even_number": 2})).await;
    let updates = stream_all(&mut c, &failing.task_uuid).await;
    check_stream(&updates, TaskState::BlockedByFailures);
    let failed = step_named(&mut c, &failing.task_uuid, "always_fails").await;
    assert_eq!(StepState::try_from(failed.state).unwrap(), StepState::Error);
    assert_eq!(failed.attempts, 3);
    let a = audit(&mut c, &failing.task_uuid, &failed.step_uuid).await;
    let enqueued: Vec<i64> = a
        .iter()
        .filter(|r| r.to_state == StepState::Enqueued as i32)
        .map(|r| ms_from_timestamp(r.recorded_at.as_ref().unwrap()).unwrap())
        .collect();
    assert_eq!(enqueued.len(), 3);
    assert!(
        enqueued[1] - enqueued[0] >= 100,
        "first retry after the 100 ms base: {enqueued:?}"
    );
    assert!(
        enqueued[2] - enqueued[1] >= 200,
        "second retry after 200 ms: {enqueued:?}"
    );
    let never = step_named(&mut c, &failing.task_uuid, "never_reached").await;
    assert_eq!(StepState::try_from(never.state).unwrap(), StepState::Pending);
    let entry = dlq_entry_of(&mut c, &failing.task_uuid).await.unwrap();
    assert_eq!(entry.dlq_reason, pb::DlqReason::MaxRetriesExceeded as i32);
    assert_eq!(entry.resolution_status, pb::DlqResolutionStatus::Pending as i32);
    assert_eq!(entry.original_state, "blocked_by_failures");

    // Resolving the failed step lets the task run on along the DAG.
    let resolved = c
        .steps
        .resolve_step(pb::ResolveStepRequest {
            task_uuid: failing.task_uuid.clone(),
            step_uuid: failed.step_uuid.clone(),
            action_type: pb::StepManualActionType::CompleteManually as i32,
            performed_by: "someone".into(),
            reason: "done by hand".into(),
            result: cairn_client::json::to_struct(&json!({"result": 7})),
            metadata: None,
        })
        .await
        .unwrap()
        .into_inner()
        .step
        .unwrap();
    assert_eq!(StepState::try_from(resolved.state).unwrap(), StepState::Complete);
    let after = stream_all(&mut c, &failing.task_uuid).await;
    let states: Vec<_> = after
        .iter()
        .filter_map(|u| u.task_state)
        .map(|s| TaskState::try_from(s).unwrap())
        .collect();
    assert_eq!(states.last(), Some(&TaskState::Complete), "{states:?}");
    assert_eq!(
        step_result(&mut c, &failing.task_uuid, "never_reached").await,
        json!({"result": 49}),
        "the next step ran on the manual result"
    );
    let a = audit(&mut c, &failing.task_uuid, &failed.step_uuid).await;
    let last = a.last().unwrap();
    assert_eq!(
        (last.from_state, last.to_state),
        (Some(StepState::Error as i32), StepState::Complete as i32),
        "manual transitions are audited"
    );

    // A held task ends with its DLQ entry's verdict, in the same commit as
    // the entry's update, and a stream open on it ends there.
    let mut settled = Vec::new();
    for (verdict, end) in [
        (pb::DlqResolutionStatus::PermanentlyFailed, TaskState::Error),
        (pb::DlqResolutionStatus::ManuallyResolved, TaskState::ResolvedManually),
    ] {
        let held = create(
            &mut c,
            "failing_workflow",
            json!({"even_number": 2, "verdict": verdict as i32}),
        )
        .await;
        let updates = stream_all(&mut c, &held.task_uuid).await;
        check_stream(&updates, TaskState::BlockedByFailures);
        let mut open = c
            .tasks
            .stream_task_status(pb::StreamTaskStatusRequest {
                task_uuid: held.task_uuid.clone(),
                include_steps: false,
            })
            .await
            .unwrap()
            .into_inner();
        let entry = dlq_entry_of(&mut c, &held.task_uuid).await.unwrap();
        c.dlq
            .update_investigation(pb::UpdateDlqInvestigationRequest {
                dlq_entry_uuid: entry.dlq_entry_uuid.clone(),
                resolution_status: Some(verdict as i32),
                resolution_notes: Some("investigated".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut last = None;
        while let Some(u) = tokio::time::timeout(std::time::Duration::from_secs(20), open.message())
            .await
            .expect("the open stream to end with the verdict")
            .unwrap()
        {
            last = u.task_state;
        }
        assert_eq!(last, Some(end as i32), "{verdict:?}");
        let task = get_task(&mut c, &held.task_uuid).await.task.unwrap();
        assert_eq!(task.state, end as i32);
        let entry = dlq_entry_of(&mut c, &held.task_uuid).await.unwrap();
        assert_eq!(entry.resolution_status, verdict as i32);
        assert!(entry.resolution_timestamp.is_some());
        settled.push(held);
    }

    // Cancel of a running task: its running step is cancelled on the worker.
    let slow = create(&mut c, "slow_workflow", json!({"sleep_ms": 60_000})).await;
    cairn_testkit::eventually(std::time::Duration::from_secs(20), "the slow step to start", || {
        let c = clients(&orch.addr);
        let uuid = slow.task_uuid.clone();
        async move {
            let mut c = c.await;
            let s = step_named(&mut c, &uuid, "sleep").await;
            (s.state == StepState::InProgress as i32).then_some(())
        }
    })
    .await;
    let cancelled = c
        .tasks
        .cancel_task(pb::CancelTaskRequest {
            task_uuid: slow.task_uuid.clone(),
            reason: Some("no longer needed".into()),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(cancelled.success);
    assert_eq!(cancelled.task.unwrap().state, TaskState::Cancelled as i32);
    for s in get_task(&mut c, &slow.task_uuid).await.steps {
        assert_eq!(s.state, StepState::Cancelled as i32, "{}", s.name);
    }
    let again = c
        .tasks
        .cancel_task(pb::CancelTaskRequest {
            task_uuid: slow.task_uuid.clone(),
            reason: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.success, "a finished task cannot be cancelled");
    assert!(again.task.is_none());

    list_filters(
        &mut c,
        &[&linear, &diamond, &first, &failing, &slow, &settled[0], &settled[1]],
    )
    .await;
}

async fn list(c: &mut Clients, request: pb::ListTasksRequest) -> pb::ListTasksResponse {
    c.tasks.list_tasks(request).await.unwrap().into_inner()
}

async fn list_filters(c: &mut Clients, created: &[&pb::Task]) {
    let all = list(c, pb::ListTasksRequest::default()).await;
    assert_eq!(all.pagination.unwrap().total, created.len() as i64);
    let by_name = list(
        c,
        pb::ListTasksRequest {
            name: Some("linear_workflow".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(by_name.tasks.len(), 2);
    assert!(by_name.tasks.iter().all(|t| t.name == "linear_workflow"));
    let states = list(
        c,
        pb::ListTasksRequest {
            states: vec![TaskState::Cancelled as i32, TaskState::Complete as i32],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(states.tasks.len(), 5, "every listed state counts, not only the first");
    let cancelled = list(
        c,
        pb::ListTasksRequest {
            states: vec![TaskState::Cancelled as i32],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(cancelled.tasks.len(), 1);
    let other_ns = list(
        c,
        pb::ListTasksRequest {
            namespace: Some("nope".into()),
            ..Default::default()
        },
    )
    .await;
    assert!(other_ns.tasks.is_empty());
    let initiator = list(
        c,
        pb::ListTasksRequest {
            initiator: Some("grpc".into()),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(initiator.tasks.len(), created.len());
    // Created range: only tasks from the diamond on.
    let from = created[1].created_at;
    let range = list(
        c,
        pb::ListTasksRequest {
            created_at: Some(pb::TimestampRange { start: from, end: None }),
            sort: Some(pb::SortSpec {
                field: "created_at".into(),
                direction: pb::SortDirection::Asc as i32,
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(range.tasks.first().unwrap().task_uuid, created[1].task_uuid);
    assert_eq!(range.tasks.len(), created.len() - 1);
    // Pagination: two pages of two, then the rest.
    let page = list(
        c,
        pb::ListTasksRequest {
            pagination: Some(pb::PaginationRequest {
                limit: Some(2),
                offset: Some(2),
            }),
            sort: Some(pb::SortSpec {
                field: "created_at".into(),
                direction: pb::SortDirection::Asc as i32,
            }),
            ..Default::default()
        },
    )
    .await;
    let p = page.pagination.unwrap();
    assert_eq!((p.count, p.offset, p.has_more), (2, 2, true));
    assert_eq!(page.tasks[0].task_uuid, created[2].task_uuid);
}

#[tokio::test]
async fn tags_filter_and_unknown_templates_and_bad_input_change_nothing() {
    let dir = TempDir::new("orch-bad");
    let db = sqlite_url(dir.path());
    let orch = start_orchestrator(dir.path(), &db, &[]).await;
    let _worker = start_worker(dir.path(), &orch.addr, "w1", &[]);
    wait_workers(&orch, 1.0).await;
    let mut c = clients(&orch.addr).await;
    let mut tagged = create_request("linear_workflow", json!({"even_number": 2}));
    tagged.tags = vec!["blue".into(), "urgent".into()];
    let tagged = c.tasks.create_task(tagged).await.unwrap().into_inner().task.unwrap();
    assert_eq!(finish(&mut c, &tagged.task_uuid).await, TaskState::Complete);
    let mut plain = create_request("linear_workflow", json!({"even_number": 4}));
    plain.tags = vec!["blue".into()];
    let plain = c.tasks.create_task(plain).await.unwrap().into_inner().task.unwrap();
    let both = list(
        &mut c,
        pb::ListTasksRequest {
            tags: vec!["blue".into(), "urgent".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(both.tasks.len(), 1, "a task must carry every tag asked for");
    assert_eq!(both.tasks[0].task_uuid, tagged.task_uuid);
    assert_eq!(finish(&mut c, &plain.task_uuid).await, TaskState::Complete);

    let before = list(&mut c, pb::ListTasksRequest::default())
        .await
        .pagination
        .unwrap()
        .total;
    let step = step_named(&mut c, &tagged.task_uuid, "linear_step_1").await;
    let audit_before = audit(&mut c, &tagged.task_uuid, &step.step_uuid).await.len();

    let unknown = c
        .tasks
        .create_task(pb::CreateTaskRequest {
            name: "no_such_workflow".into(),
            ..create_request("x", json!({}))
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert!(unknown.message().contains("template not found"), "{unknown:?}");
    let schema = c
        .tasks
        .create_task(create_request("linear_workflow", json!({"even_number": "two"})))
        .await
        .unwrap_err();
    assert_eq!(schema.code(), Code::InvalidArgument);
    assert!(schema.message().contains("context.even_number"), "{schema:?}");
    let missing = c
        .tasks
        .create_task(create_request("linear_workflow", json!({})))
        .await
        .unwrap_err();
    assert!(
        missing.message().contains("context.even_number is required"),
        "{missing:?}"
    );
    let empty = c
        .tasks
        .create_task(pb::CreateTaskRequest {
            version: String::new(),
            ..create_request("linear_workflow", json!({"even_number": 8}))
        })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    let bad_correlation = c
        .tasks
        .create_task(pb::CreateTaskRequest {
            correlation_id: Some("not-a-uuid".into()),
            ..create_request("linear_workflow", json!({"even_number": 8}))
        })
        .await
        .unwrap_err();
    assert_eq!(bad_correlation.code(), Code::InvalidArgument);

    let bad_uuid = c
        .tasks
        .get_task(pb::GetTaskRequest {
            task_uuid: "1234".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_uuid.code(), Code::InvalidArgument);
    assert!(bad_uuid.message().starts_with("Invalid UUID"));
    let cancel_bad = c
        .tasks
        .cancel_task(pb::CancelTaskRequest {
            task_uuid: "zzz".into(),
            reason: None,
        })
        .await
        .unwrap_err();
    assert_eq!(cancel_bad.code(), Code::InvalidArgument);
    let unknown_task = c
        .tasks
        .get_task(pb::GetTaskRequest {
            task_uuid: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_task.code(), Code::NotFound);
    let unknown_stream = c
        .tasks
        .stream_task_status(pb::StreamTaskStatusRequest {
            task_uuid: uuid::Uuid::new_v4().to_string(),
            include_steps: true,
        })
        .await
        .unwrap_err();
    assert_eq!(unknown_stream.code(), Code::NotFound);
    let other_task_step = c
        .steps
        .get_step(pb::GetStepRequest {
            task_uuid: plain.task_uuid.clone(),
            step_uuid: step.step_uuid.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(other_task_step.code(), Code::InvalidArgument, "a step of another task");

    let resolve = |action: i32, result: Option<prost_types::Struct>| pb::ResolveStepRequest {
        task_uuid: tagged.task_uuid.clone(),
        step_uuid: step.step_uuid.clone(),
        action_type: action,
        performed_by: "x".into(),
        reason: "y".into(),
        result,
        metadata: None,
    };
    for (action, result, needle) in [
        (0, None, "Action type must be specified"),
        (99, None, "Invalid action type"),
        (
            pb::StepManualActionType::CompleteManually as i32,
            None,
            "result is required",
        ),
        (
            pb::StepManualActionType::ResetForRetry as i32,
            None,
            "only a step in error",
        ),
        (
            pb::StepManualActionType::CompleteManually as i32,
            cairn_client::json::to_struct(&json!({"result": 1})),
            "only a step in error",
        ),
    ] {
        let e = c.steps.resolve_step(resolve(action, result)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{action}: {e:?}");
        assert!(e.message().contains(needle), "{action}: {e:?}");
    }
    for limit in [0, 101] {
        let e = c
            .tasks
            .list_tasks(pb::ListTasksRequest {
                pagination: Some(pb::PaginationRequest {
                    limit: Some(limit),
                    offset: None,
                }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
    }
    let bad_state = c
        .tasks
        .list_tasks(pb::ListTasksRequest {
            states: vec![77],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_state.code(), Code::InvalidArgument);
    let bad_sort = c
        .tasks
        .list_tasks(pb::ListTasksRequest {
            sort: Some(pb::SortSpec {
                field: "context; DROP TABLE tasks".into(),
                direction: 0,
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_sort.code(), Code::InvalidArgument);

    // Nothing changed.
    let after = list(&mut c, pb::ListTasksRequest::default())
        .await
        .pagination
        .unwrap()
        .total;
    assert_eq!(after, before);
    assert_eq!(
        audit(&mut c, &tagged.task_uuid, &step.step_uuid).await.len(),
        audit_before
    );
    let s = step_named(&mut c, &tagged.task_uuid, "linear_step_1").await;
    assert_eq!(s.state, StepState::Complete as i32);
}

/// A subscriber that stops reading falls behind the engine and is dropped;
/// its stream catches up from the database and still delivers every
/// transition once, in order.
#[tokio::test]
async fn a_stream_that_falls_behind_catches_up_from_the_database() {
    let dir = TempDir::new("orch-lagging");
    let mut yaml = String::from("namespace: wide\nname: fan\nversion: 1.0.0\nsteps:\n");
    for i in 0..800 {
        yaml.push_str(&format!("  - name: s{i}\n    handler: demo.square\n"));
    }
    let templates_dir = templates_dir(dir.path(), &[("fan.yaml", &yaml)]);
    let orch = start_orchestrator(dir.path(), &sqlite_url(dir.path()), &["--set", &templates_dir]).await;
    let _worker = start_worker(dir.path(), &orch.addr, "w1", &["--concurrency", "64"]);
    wait_workers(&orch, 1.0).await;
    let mut c = clients(&orch.addr).await;
    let task = create_in(&mut c, "wide", "fan", json!({"even_number": 2})).await;
    let mut stream = c
        .tasks
        .stream_task_status(pb::StreamTaskStatusRequest {
            task_uuid: task.task_uuid.clone(),
            include_steps: true,
        })
        .await
        .unwrap()
        .into_inner();
    // Not reading while the task runs: thousands of events pile up.
    let uuid = task.task_uuid.clone();
    cairn_testkit::eventually(std::time::Duration::from_secs(60), "the wide task to complete", || {
        let c = clients(&orch.addr);
        let uuid = uuid.clone();
        async move {
            let t = get_task(&mut c.await, &uuid).await.task.unwrap();
            (t.state == TaskState::Complete as i32).then_some(())
        }
    })
    .await;
    let mut updates = Vec::new();
    while let Some(u) = stream.message().await.unwrap() {
        updates.push(u);
    }
    let (_, step_changes) = check_stream(&updates, TaskState::Complete);
    // pending, enqueued, in_progress, enqueued_for_orchestration, complete.
    assert_eq!(step_changes, 800 * 5, "every step transition once");
}
