//! The orchestrator under faults, through real processes: a worker killed
//! mid-step (the step reruns elsewhere at once, well inside the lease), the
//! orchestrator killed mid-workflow and restarted (every acknowledged task
//! completes, no step succeeds twice, none is left stuck), a worker frozen
//! with SIGSTOP (its lease expires, the step reruns elsewhere, and whatever
//! it sends after SIGCONT is not taken), and a graceful worker drain.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use cairn_client::names::ms_from_timestamp;
use cairn_proto::tasker::v1 as pb;
use cairn_testkit::{Process, TempDir, eventually, free_port, postgres_url, sqlite_url};
use common::*;
use serde_json::json;

/// Waits until step `name` of the task is IN_PROGRESS; the worker uuid that holds it.
async fn holder(addr: &str, task: &str, name: &str) -> String {
    eventually(Duration::from_secs(30), "the step to start", || {
        let (addr, task, name) = (addr.to_owned(), task.to_owned(), name.to_owned());
        async move {
            let mut c = clients(&addr).await;
            let s = step_named(&mut c, &task, &name).await;
            if s.state != StepState::InProgress as i32 {
                return None;
            }
            audit(&mut c, &task, &s.step_uuid)
                .await
                .iter()
                .rev()
                .find(|r| r.to_state == StepState::Enqueued as i32)
                .and_then(|r| r.worker_uuid.clone())
        }
    })
    .await
}

/// Which of `workers` announced `uuid` as its worker uuid.
fn which(workers: &[Process], uuid: &str) -> usize {
    workers
        .iter()
        .position(|w| w.log_text().contains(uuid))
        .unwrap_or_else(|| panic!("no worker logged {uuid}"))
}

fn successes(records: &[pb::StepAuditRecord]) -> Vec<&pb::StepAuditRecord> {
    records
        .iter()
        .filter(|r| r.to_state == StepState::EnqueuedForOrchestration as i32)
        .collect()
}

#[tokio::test]
async fn a_worker_killed_mid_step_has_the_step_rerun_elsewhere_at_once() {
    let dir = TempDir::new("orch-kill-worker");
    let orch = start_orchestrator(dir.path(), &sqlite_url(dir.path()), &[]).await;
    let mut workers = vec![
        start_worker(dir.path(), &orch.addr, "w1", &[]),
        start_worker(dir.path(), &orch.addr, "w2", &[]),
    ];
    wait_workers(&orch, 2.0).await;
    let mut c = clients(&orch.addr).await;
    let task = create(&mut c, "slow_workflow", json!({"sleep_ms": 2000, "even_number": 4})).await;
    let first = holder(&orch.addr, &task.task_uuid, "sleep").await;
    let victim = which(&workers, &first);
    let killed_at = cairn_client::names::now_ms();
    workers[victim].kill();
    assert_eq!(finish(&mut c, &task.task_uuid).await, TaskState::Complete);
    let step = step_named(&mut c, &task.task_uuid, "sleep").await;
    assert_eq!(step.attempts, 2);
    let records = audit(&mut c, &task.task_uuid, &step.step_uuid).await;
    let failure = records
        .iter()
        .find(|r| r.to_state == StepState::EnqueuedAsErrorForOrchestration as i32)
        .unwrap();
    let failed_at = ms_from_timestamp(failure.recorded_at.as_ref().unwrap()).unwrap();
    // The lease is 30 s: a failure this soon came from the disconnect.
    assert!(
        failed_at - killed_at < 10_000,
        "failed {} ms after the kill",
        failed_at - killed_at
    );
    let ok = successes(&records);
    assert_eq!(ok.len(), 1);
    assert_ne!(
        ok[0].worker_uuid.as_deref(),
        Some(first.as_str()),
        "it reran on the other worker"
    );
    assert_eq!(
        step_result(&mut c, &task.task_uuid, "after_sleep").await,
        json!({"result": 16})
    );
}

#[tokio::test]
async fn the_orchestrator_killed_mid_workflow_loses_no_task_and_leaves_none_stuck() {
    let dir = TempDir::new("orch-kill-orch");
    let db = sqlite_url(dir.path());
    killed_mid_workflow(&dir, &db).await;
}

#[tokio::test]
async fn the_orchestrator_killed_mid_workflow_on_postgres_loses_no_task() {
    let Some(db) = postgres_url().await else { return };
    let dir = TempDir::new("orch-kill-orch-pg");
    killed_mid_workflow(&dir, &db).await;
}

async fn killed_mid_workflow(dir: &TempDir, db: &str) {
    let db = db.to_owned();
    let port = free_port();
    let mut orch = start_orchestrator_on(Some(port), dir.path(), &db, &[]).await;
    let _worker = start_worker(dir.path(), &orch.addr, "w1", &["--concurrency", "8"]);
    wait_workers(&orch, 1.0).await;
    let addr = orch.addr.clone();
    // Acknowledged creates, and what each must end with.
    let mut acknowledged: Vec<(String, &str, i64)> = Vec::new();
    let mut c = clients(&addr).await;
    let mut n = 0i64;
    let mut restarted = false;
    while acknowledged.len() < 60 {
        n += 1;
        let (name, context) = match n % 3 {
            0 => ("slow_workflow", json!({"sleep_ms": 300, "even_number": n})),
            1 => ("linear_workflow", json!({"even_number": 2 + n % 2, "n": n})),
            _ => ("diamond_workflow", json!({"even_number": 3, "n": n})),
        };
        let expected = match name {
            "slow_workflow" => n * n,
            "linear_workflow" => (2 + n % 2).pow(16),
            _ => 6561,
        };
        let last_step = match name {
            "slow_workflow" => "after_sleep",
            "linear_workflow" => "linear_step_4",
            _ => "diamond_end",
        };
        match c.tasks.create_task(create_request(name, context)).await {
            Ok(r) => acknowledged.push((r.into_inner().task.unwrap().task_uuid, last_step, expected)),
            Err(status) => {
                // Only while it is down, and never for a create it answered.
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                    ),
                    "{status:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if acknowledged.len() == 30 && !restarted {
            // Mid-workflow: slow steps run, others wait for capacity.
            orch.kill();
            orch = start_orchestrator_on(Some(port), dir.path(), &db, &[]).await;
            restarted = true;
            c = clients(&addr).await;
        }
    }
    assert!(restarted);
    let mut rerun = 0;
    for (task, last_step, expected) in &acknowledged {
        let state = finish(&mut c, task).await;
        assert_eq!(state, TaskState::Complete, "task {task}");
        assert_eq!(
            step_result(&mut c, task, last_step).await,
            json!({"result": expected}),
            "task {task}"
        );
        for s in get_task(&mut c, task).await.steps {
            rerun += usize::from(s.attempts > 1);
            let records = audit(&mut c, task, &s.step_uuid).await;
            assert_eq!(successes(&records).len(), 1, "step {} of {task} succeeded once", s.name);
        }
    }
    assert!(rerun > 0, "the kill caught attempts in flight (they ran again)");
    let unfinished = c
        .tasks
        .list_tasks(pb::ListTasksRequest {
            states: [
                TaskState::Pending,
                TaskState::Initializing,
                TaskState::EnqueuingSteps,
                TaskState::StepsInProcess,
                TaskState::EvaluatingResults,
                TaskState::WaitingForDependencies,
                TaskState::WaitingForRetry,
            ]
            .map(|s| s as i32)
            .to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unfinished.pagination.unwrap().total, 0, "none stuck");
    drop(orch);
}

#[tokio::test]
async fn a_frozen_worker_loses_its_lease_and_its_late_result_is_not_taken() {
    let dir = TempDir::new("orch-sigstop");
    let orch = start_orchestrator(
        dir.path(),
        &sqlite_url(dir.path()),
        &[
            "--set",
            "orchestrator.lease=1s",
            "--set",
            "orchestrator.heartbeat_interval=250ms",
        ],
    )
    .await;
    let workers = vec![
        start_worker(dir.path(), &orch.addr, "w1", &[]),
        start_worker(dir.path(), &orch.addr, "w2", &[]),
    ];
    wait_workers(&orch, 2.0).await;
    let mut c = clients(&orch.addr).await;
    let task = create(&mut c, "slow_workflow", json!({"sleep_ms": 2500, "even_number": 2})).await;
    let first = holder(&orch.addr, &task.task_uuid, "sleep").await;
    let frozen = which(&workers, &first);
    workers[frozen].pause();
    let paused = Instant::now();
    // Its lease ends; the step reruns on the other worker.
    let second = eventually(Duration::from_secs(20), "the step to move", || {
        let (addr, task) = (orch.addr.clone(), task.task_uuid.clone());
        let first = first.clone();
        async move {
            let mut c = clients(&addr).await;
            let s = step_named(&mut c, &task, "sleep").await;
            let records = audit(&mut c, &task, &s.step_uuid).await;
            records
                .iter()
                .rev()
                .find(|r| r.to_state == StepState::Enqueued as i32)
                .and_then(|r| r.worker_uuid.clone())
                .filter(|w| w != &first)
        }
    })
    .await;
    // Let the frozen worker's sleep end while frozen, then thaw it: whatever
    // it sends now is for an attempt that is over.
    tokio::time::sleep(Duration::from_millis(2600).saturating_sub(paused.elapsed())).await;
    workers[frozen].resume();
    assert_eq!(finish(&mut c, &task.task_uuid).await, TaskState::Complete);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let step = step_named(&mut c, &task.task_uuid, "sleep").await;
    assert_eq!(step.attempts, 2);
    let records = audit(&mut c, &task.task_uuid, &step.step_uuid).await;
    let ok = successes(&records);
    assert_eq!(ok.len(), 1, "only one attempt's result was taken");
    assert_eq!(ok[0].worker_uuid.as_deref(), Some(second.as_str()));
    let log = workers[frozen].log_text();
    assert!(
        log.contains("result refused") || log.contains("step cancelled"),
        "the thawed worker learns its attempt is over:\n{log}"
    );
}

#[tokio::test]
async fn a_draining_worker_finishes_its_steps_then_leaves() {
    let dir = TempDir::new("orch-drain");
    let orch = start_orchestrator(dir.path(), &sqlite_url(dir.path()), &[]).await;
    let mut worker = start_worker(dir.path(), &orch.addr, "w1", &[]);
    wait_workers(&orch, 1.0).await;
    let mut c = clients(&orch.addr).await;
    let task = create(&mut c, "slow_workflow", json!({"sleep_ms": 1500, "even_number": 2})).await;
    holder(&orch.addr, &task.task_uuid, "sleep").await;
    let code = worker.terminate(Duration::from_secs(20)).await;
    assert_eq!(code, Some(0), "{}", worker.log_text());
    let step = step_named(&mut c, &task.task_uuid, "sleep").await;
    assert_eq!(
        step.state,
        StepState::Complete as i32,
        "the running step finished before it left"
    );
    assert_eq!(step.attempts, 1);
    // The next step waits for a worker: none is connected.
    let after = step_named(&mut c, &task.task_uuid, "after_sleep").await;
    assert_eq!(after.state, StepState::Pending as i32);
    let _again = start_worker(dir.path(), &orch.addr, "w2", &[]);
    assert_eq!(finish(&mut c, &task.task_uuid).await, TaskState::Complete);
}
