//! tasker's permissions as Cairn scopes, checked by a real cairn-auth:
//! keys by `authorization: Bearer` or `x-api-key`, open health RPCs,
//! `resource:*` wildcards, workers needing `workers:connect`, and
//! ResolveStep recording the authenticated caller, not the client's string.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cairn_proto::tasker::v1::{self as pb, health_service_client::HealthServiceClient};
use cairn_testkit::{
    Process,
    cluster::{Cluster, create_key, start_auth, with_key},
    eventually, sqlite_url,
};
use common::*;
use serde_json::json;
use sqlx::{Connection, Row};
use tonic::Code;

#[tokio::test]
async fn permissions_are_scopes_and_resolve_records_the_caller() {
    let cluster = Cluster::new();
    let (auth, admin) = start_auth(&cluster).await;
    let dir = &cluster.dir;
    let db = sqlite_url(dir.path());
    let auth_address = format!("auth.address={}", auth.addr);
    let orch = start_orchestrator(dir.path(), &db, &["--set", "auth.enabled=true", "--set", &auth_address]).await;
    let worker_key = create_key(&auth.addr, &admin, &["workers:connect"]).await;
    let creator = create_key(&auth.addr, &admin, &["tasks:create", "tasks:read"]).await;
    let reader = create_key(&auth.addr, &admin, &["tasks:read"]).await;
    let resolver = create_key(&auth.addr, &admin, &["steps:*"]).await;
    let tasks_all = create_key(&auth.addr, &admin, &["tasks:*"]).await;

    // A worker without a key is refused for good and says so.
    let mut keyless = start_worker(dir.path(), &orch.addr, "keyless", &[]);
    let log = eventually(Duration::from_secs(20), "the keyless worker to give up", || {
        let log = keyless.log_text();
        async move { log.contains("refused this worker").then_some(log) }
    })
    .await;
    assert!(log.contains("API key"), "{log}");
    keyless.kill();
    let _worker = start_worker(dir.path(), &orch.addr, "w1", &["--api-key", &worker_key]);
    wait_workers(&orch, 1.0).await;

    let mut c = clients(&orch.addr).await;
    let request = || create_request("failing_workflow", json!({"even_number": 2}));
    let none = c.tasks.create_task(request()).await.unwrap_err();
    assert_eq!(none.code(), Code::Unauthenticated);
    let denied = c.tasks.create_task(with_key(request(), &reader)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    // tasker's own client sends the key as x-api-key.
    let mut by_header = tonic::Request::new(request());
    by_header.metadata_mut().insert("x-api-key", creator.parse().unwrap());
    let task = c.tasks.create_task(by_header).await.unwrap().into_inner().task.unwrap();

    // Health needs no key.
    let mut health = HealthServiceClient::new(c.channel.clone());
    health.check_liveness(pb::LivenessRequest {}).await.unwrap();
    health.check_health(pb::HealthRequest {}).await.unwrap();

    // Context: GetTaskContext needs tasks:context_read; GetTask's copy only tasks:read.
    let ctx = c
        .tasks
        .get_task_context(with_key(
            pb::GetTaskContextRequest {
                task_uuid: task.task_uuid.clone(),
            },
            &reader,
        ))
        .await
        .unwrap_err();
    assert_eq!(ctx.code(), Code::PermissionDenied);
    let got = c
        .tasks
        .get_task(with_key(
            pb::GetTaskRequest {
                task_uuid: task.task_uuid.clone(),
                include_steps: true,
                include_context: true,
            },
            &reader,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(got.context.is_some());

    // Wait for the failure, then resolve the failed step as `resolver`.
    let mut stream = c
        .tasks
        .stream_task_status(with_key(
            pb::StreamTaskStatusRequest {
                task_uuid: task.task_uuid.clone(),
                include_steps: false,
            },
            &reader,
        ))
        .await
        .unwrap()
        .into_inner();
    // The task is held (its stream stays open) until the step is resolved.
    let mut last = None;
    while last != Some(TaskState::BlockedByFailures as i32) {
        let u = tokio::time::timeout(std::time::Duration::from_secs(30), stream.message())
            .await
            .expect("the task to be held")
            .unwrap()
            .expect("the stream stays open while the task is held");
        last = u.task_state.or(last);
    }
    let failed = got.steps.iter().find(|s| s.name == "always_fails").unwrap();
    let resolve = pb::ResolveStepRequest {
        task_uuid: task.task_uuid.clone(),
        step_uuid: failed.step_uuid.clone(),
        action_type: pb::StepManualActionType::CompleteManually as i32,
        performed_by: "mallory".into(),
        reason: "fixed".into(),
        result: cairn_client::json::to_struct(&json!({"result": 3})),
        metadata: None,
    };
    let wrong = c
        .steps
        .resolve_step(with_key(resolve.clone(), &tasks_all))
        .await
        .unwrap_err();
    assert_eq!(
        wrong.code(),
        Code::PermissionDenied,
        "tasks:* does not cover steps:resolve"
    );
    c.steps.resolve_step(with_key(resolve, &resolver)).await.unwrap();

    // The wildcard covers every tasks action.
    let listed = c
        .tasks
        .list_tasks(with_key(pb::ListTasksRequest::default(), &tasks_all))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.tasks.len(), 1);

    let mut conn = sqlx::SqliteConnection::connect(&db).await.unwrap();
    let row = sqlx::query("SELECT performed_by FROM step_transitions WHERE step_uuid = ? AND performed_by IS NOT NULL")
        .bind(&failed.step_uuid)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let by: String = row.get("performed_by");
    assert!(by.starts_with("key:"), "{by}");
    assert!(
        !by.contains("mallory"),
        "performed_by is the caller, not what the client says: {by}"
    );
    drop::<Process>(auth);
}
