//! A real `cairn-orchestrator` and real `cairn-demo-worker` processes, and
//! tasker.v1 clients to them (auth off unless a test turns it on).

#![allow(clippy::unwrap_used, dead_code, unused_imports)]

use std::{path::Path, time::Duration};

use cairn_client::json::{from_struct, to_struct};
use cairn_proto::tasker::v1::{
    self as pb, dlq_service_client::DlqServiceClient, step_service_client::StepServiceClient,
    task_service_client::TaskServiceClient,
};
use cairn_service::{Client, ClientConfig};
use cairn_testkit::{Process, eventually, metric};
use serde_json::Value;

pub use cairn_orchestrator::state::{StepState, TaskState};

/// Starts the orchestrator on `db` and waits until it serves.
pub async fn start_orchestrator(dir: &Path, db: &str, extra: &[&str]) -> Process {
    start_orchestrator_on(None, dir, db, extra).await
}

/// [`start_orchestrator`] on a given port (a restart keeps its address).
pub async fn start_orchestrator_on(port: Option<u16>, dir: &Path, db: &str, extra: &[&str]) -> Process {
    let database = format!("database.url={db}");
    let mut args = vec!["--set", "auth.enabled=false", "--set", &database];
    args.extend_from_slice(extra);
    let mut last = String::new();
    for _ in 0..5 {
        let mut p = match port {
            Some(port) => Process::start_on(port, "cairn-orchestrator", &args, &[], dir),
            None => Process::start("cairn-orchestrator", &args, &[], dir),
        };
        match p.try_wait_serving(Duration::from_secs(60)).await {
            Ok(()) => return p,
            Err(e) if port.is_some() && e.contains("Address already in use") => {
                last = e;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("{last}");
}

/// Starts a demo worker connected to `orchestrator`.
pub fn start_worker(dir: &Path, orchestrator: &str, name: &str, extra: &[&str]) -> Process {
    let addr = format!("http://{orchestrator}");
    let mut args = vec!["--orchestrator", &addr, "--name", name];
    args.extend_from_slice(extra);
    Process::start_plain(
        "cairn-demo-worker",
        &args,
        &[("CAIRN_LOG", "info,cairn_worker=debug")],
        dir,
    )
}

/// Waits until the orchestrator counts `n` connected workers.
pub async fn wait_workers(orchestrator: &Process, n: f64) {
    eventually(Duration::from_secs(30), "workers to connect", || async {
        let scrape = orchestrator.scrape().await;
        (metric(&scrape, "cairn_orchestrator_workers") == Some(n)).then_some(())
    })
    .await;
}

pub struct Clients {
    pub tasks: TaskServiceClient<Client>,
    pub steps: StepServiceClient<Client>,
    pub dlq: DlqServiceClient<Client>,
    pub channel: Client,
}

pub async fn clients(addr: &str) -> Clients {
    let channel = Client::connect_lazy(addr, &ClientConfig::default())
        .unwrap()
        .with_timeout(Duration::from_secs(60));
    Clients {
        tasks: TaskServiceClient::new(channel.clone()),
        steps: StepServiceClient::new(channel.clone()),
        dlq: DlqServiceClient::new(channel.clone()),
        channel,
    }
}

pub fn create_request(name: &str, context: Value) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        name: name.into(),
        namespace: "demo".into(),
        version: "1.0.0".into(),
        context: to_struct(&context),
        ..Default::default()
    }
}

pub async fn create(c: &mut Clients, name: &str, context: Value) -> pb::Task {
    create_in(c, "demo", name, context).await
}

/// Creates a task of `namespace/name` 1.0.0.
pub async fn create_in(c: &mut Clients, namespace: &str, name: &str, context: Value) -> pb::Task {
    c.tasks
        .create_task(pb::CreateTaskRequest {
            namespace: namespace.into(),
            ..create_request(name, context)
        })
        .await
        .unwrap()
        .into_inner()
        .task
        .unwrap()
}

/// Writes `files` (name, text) into a templates directory under `dir`; the
/// `--set` value that points the orchestrator at it.
pub fn templates_dir(dir: &Path, files: &[(&str, &str)]) -> String {
    let templates = dir.join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    for (name, text) in files {
        std::fs::write(templates.join(name), text).unwrap();
    }
    format!("orchestrator.templates_dir={}", templates.display())
}

/// The task's most recent DLQ entry.
pub async fn dlq_entry_of(c: &mut Clients, task_uuid: &str) -> Option<pb::DlqEntry> {
    c.dlq
        .get_entry_by_task(pb::GetDlqEntryByTaskRequest {
            task_uuid: task_uuid.into(),
        })
        .await
        .ok()
        .and_then(|r| r.into_inner().entry)
}

/// Every DLQ entry still pending.
pub async fn pending_dlq(c: &mut Clients) -> Vec<pb::DlqEntry> {
    c.dlq
        .list_entries(pb::ListDlqEntriesRequest {
            resolution_status: Some(pb::DlqResolutionStatus::Pending as i32),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .entries
}

/// Every update StreamTaskStatus sends for the task, until it ends.
pub async fn stream_all(c: &mut Clients, task_uuid: &str) -> Vec<pb::TaskStatusUpdate> {
    let mut stream = c
        .tasks
        .stream_task_status(pb::StreamTaskStatusRequest {
            task_uuid: task_uuid.into(),
            include_steps: true,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let next = tokio::time::timeout_at(give_up, stream.message())
            .await
            .expect("the task to end or be held within 60 s");
        match next.unwrap() {
            Some(u) => {
                // A task held for an operator streams on: stop while it is
                // still held (the replay also shows holds it has left).
                let held = u.task_state == Some(TaskState::BlockedByFailures as i32);
                out.push(u);
                if held && get_task(c, task_uuid).await.task.unwrap().state == TaskState::BlockedByFailures as i32 {
                    return out;
                }
            }
            None => return out,
        }
    }
}

/// Waits for the task to end (through StreamTaskStatus); its final state.
pub async fn finish(c: &mut Clients, task_uuid: &str) -> TaskState {
    let updates = stream_all(c, task_uuid).await;
    updates
        .iter()
        .rev()
        .find_map(|u| u.task_state)
        .map(|s| TaskState::try_from(s).unwrap())
        .unwrap()
}

pub async fn get_task(c: &mut Clients, task_uuid: &str) -> pb::GetTaskResponse {
    c.tasks
        .get_task(pb::GetTaskRequest {
            task_uuid: task_uuid.into(),
            include_steps: true,
            include_context: true,
        })
        .await
        .unwrap()
        .into_inner()
}

/// The result of step `name` as JSON.
pub async fn step_result(c: &mut Clients, task_uuid: &str, name: &str) -> Value {
    let outputs = get_task(c, task_uuid).await.context.unwrap().outputs.unwrap();
    from_struct(&outputs)[name].clone()
}

pub async fn step_named(c: &mut Clients, task_uuid: &str, name: &str) -> pb::Step {
    get_task(c, task_uuid)
        .await
        .steps
        .into_iter()
        .find(|s| s.name == name)
        .unwrap()
}

pub async fn audit(c: &mut Clients, task_uuid: &str, step_uuid: &str) -> Vec<pb::StepAuditRecord> {
    let mut records = c
        .steps
        .get_step_audit(pb::GetStepAuditRequest {
            task_uuid: task_uuid.into(),
            step_uuid: step_uuid.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .audit_records;
    records.reverse(); // oldest first
    records
}
