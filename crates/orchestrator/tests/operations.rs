//! Operating the orchestrator: templates from a directory and their
//! immutability, backpressure on CreateTask, DLQ entries from the sweeps and
//! the investigation RPCs, health and config answers, analytics as
//! percentages, and the metrics.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cairn_proto::tasker::v1::{
    self as pb, analytics_service_client::AnalyticsServiceClient, config_service_client::ConfigServiceClient,
    health_service_client::HealthServiceClient, template_service_client::TemplateServiceClient,
};
use cairn_testkit::{TempDir, eventually, metric, sqlite_url};
use common::*;
use serde_json::json;
use tonic::Code;

const CONFLICTING: &str =
    "namespace: demo\nname: linear_workflow\nversion: 1.0.0\nsteps:\n  - name: other\n    handler: demo.square\n";
const OWN: &str = "namespace: ops\nname: nightly\nversion: 2.1.0\ndescription: From the directory\nsteps:\n  - name: a\n    handler: ops.a\n  - name: b\n    handler: ops.b\n    dependencies: [a]\n    retry:\n      max_attempts: 5\n";

#[tokio::test]
async fn templates_backpressure_dlq_and_health() {
    let dir = TempDir::new("orch-ops");
    let templates_dir = templates_dir(
        dir.path(),
        &[
            ("nightly.yaml", OWN),
            ("linear.yml", CONFLICTING),
            ("notes.txt", "not a template"),
        ],
    );
    let orch = start_orchestrator(
        dir.path(),
        &sqlite_url(dir.path()),
        &[
            "--set",
            &templates_dir,
            "--set",
            "orchestrator.max_ready_steps=2",
            "--set",
            "orchestrator.retry_after=3s",
            "--set",
            "orchestrator.no_worker_timeout=300ms",
            "--set",
            "orchestrator.sweep_interval=50ms",
        ],
    )
    .await;
    let mut c = clients(&orch.addr).await;
    let mut t = TemplateServiceClient::new(c.channel.clone());
    let listed = t
        .list_templates(pb::ListTemplatesRequest { namespace: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total_count, 2);
    let detail = t
        .get_template(pb::GetTemplateRequest {
            namespace: "ops".into(),
            name: "nightly".into(),
            version: "2.1.0".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .template
        .unwrap();
    assert_eq!(detail.description.as_deref(), Some("From the directory"));
    assert_eq!(
        detail
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.default_max_attempts))
            .collect::<Vec<_>>(),
        [("a", 3), ("b", 5)]
    );
    let missing = t
        .get_template(pb::GetTemplateRequest {
            namespace: "ops".into(),
            name: "nightly".into(),
            version: "9.9.9".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    // A worker bringing the same version with another body is refused.
    let mut conflicting = start_worker(dir.path(), &orch.addr, "conflict", &[]);
    let log = eventually(Duration::from_secs(20), "the worker to be refused", || {
        let log = conflicting.log_text();
        async move { log.contains("refused this worker").then_some(log) }
    })
    .await;
    assert!(log.contains("already registered with a different body"), "{log}");
    conflicting.kill();

    // Backpressure: no worker, so ready steps pile up to the bound.
    let ops = |n: i64| pb::CreateTaskRequest {
        namespace: "ops".into(),
        name: "nightly".into(),
        version: "2.1.0".into(),
        context: cairn_client::json::to_struct(&json!({"n": n})),
        ..Default::default()
    };
    let first = c.tasks.create_task(ops(1)).await.unwrap().into_inner();
    let bp = first.backpressure.unwrap();
    assert!(!bp.active);
    assert_eq!(bp.max_queue_depth, Some(2));
    let second = c.tasks.create_task(ops(2)).await.unwrap().into_inner().task.unwrap();
    let refused = eventually(Duration::from_secs(10), "the ready queue to fill", || {
        let mut tasks = c.tasks.clone();
        async move { tasks.create_task(ops(3)).await.err() }
    })
    .await;
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().starts_with("Backpressure active"));
    assert_eq!(refused.metadata().get("retry-after").unwrap(), "3");
    let details = tonic_types::StatusExt::get_error_details(&refused);
    assert_eq!(details.retry_info().unwrap().retry_delay, Some(Duration::from_secs(3)));
    let total = c
        .tasks
        .list_tasks(pb::ListTasksRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pagination
        .unwrap()
        .total;
    assert_eq!(total, 2, "a refused create changes nothing");

    // No worker serves ops.a: after the timeout both tasks go to the DLQ.
    let entries = eventually(Duration::from_secs(20), "DLQ entries", || {
        let mut dlq = c.dlq.clone();
        async move {
            let e = dlq
                .list_entries(pb::ListDlqEntriesRequest::default())
                .await
                .unwrap()
                .into_inner()
                .entries;
            (e.len() == 2).then_some(e)
        }
    })
    .await;
    for e in &entries {
        assert_eq!(e.dlq_reason, pb::DlqReason::WorkerUnavailable as i32);
        assert_eq!(e.resolution_status, pb::DlqResolutionStatus::Pending as i32);
        assert!(uuid::Uuid::parse_str(&e.dlq_entry_uuid).is_ok());
        assert_eq!(
            cairn_client::json::from_struct(e.metadata.as_ref().unwrap())["handler"],
            json!("ops.a")
        );
    }
    let queue = c
        .dlq
        .get_investigation_queue(pb::GetDlqInvestigationQueueRequest { limit: None })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(queue.len(), 2);
    assert!(queue[0].priority_score >= queue[1].priority_score);
    assert_eq!(queue[0].namespace_name.as_deref(), Some("ops"));
    let updated = c
        .dlq
        .update_investigation(pb::UpdateDlqInvestigationRequest {
            dlq_entry_uuid: entries[0].dlq_entry_uuid.clone(),
            resolution_status: Some(pb::DlqResolutionStatus::ManuallyResolved as i32),
            resolution_notes: Some("deployed the ops worker".into()),
            resolved_by: Some("ops-oncall".into()),
            metadata: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(updated.success);
    let unknown = c
        .dlq
        .update_investigation(pb::UpdateDlqInvestigationRequest {
            dlq_entry_uuid: uuid::Uuid::new_v4().to_string(),
            resolution_status: Some(pb::DlqResolutionStatus::Cancelled as i32),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let pending = pending_dlq(&mut c).await;
    assert_eq!(pending.len(), 1);
    let stats = c
        .dlq
        .get_stats(pb::GetDlqStatsRequest {})
        .await
        .unwrap()
        .into_inner()
        .stats;
    assert_eq!(stats.len(), 1);
    assert_eq!(
        (stats[0].total_entries, stats[0].pending, stats[0].manually_resolved),
        (2, 1, 1)
    );
    let stale = c
        .dlq
        .get_staleness_monitoring(pb::GetStalenessMonitoringRequest { limit: Some(10) })
        .await
        .unwrap()
        .into_inner()
        .entries;
    assert_eq!(stale.len(), 2);
    assert!(stale.iter().any(|s| s.task_uuid == second.task_uuid));
    assert!(
        stale
            .iter()
            .all(|s| s.health_status == pb::StalenessHealthStatus::Healthy as i32)
    );

    // Health reflects the database and the missing workers.
    let mut health = HealthServiceClient::new(c.channel.clone());
    let ready = health
        .check_readiness(pb::ReadinessRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ready.status, "degraded");
    let checks = ready.checks.unwrap();
    assert_eq!(checks.orchestration_database.unwrap().status, "healthy");
    assert_eq!(
        checks.orchestration_system.unwrap().message.as_deref(),
        Some("no workers connected")
    );
    assert!(checks.web_database.is_some() && checks.circuit_breaker.is_some() && checks.command_processor.is_some());
    let info = ready.info.unwrap();
    let pools = info.pool_utilization.unwrap();
    assert!(pools.tasker_pool.is_some() && pools.pgmq_pool.is_some());
    let detailed = health
        .check_detailed_health(pb::DetailedHealthRequest {})
        .await
        .unwrap()
        .into_inner();
    let d = detailed.checks.unwrap();
    assert!(d.pool_utilization.is_some() && d.channel_saturation.is_some());
    assert_eq!(
        d.queue_depth.unwrap().status,
        "degraded",
        "the ready queue is at its bound"
    );
    let config = ConfigServiceClient::new(c.channel.clone())
        .get_config(pb::GetConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(config.metadata.is_some() && config.circuit_breakers.is_some() && config.database_pools.is_some());
    let auth = config.auth.unwrap();
    assert!(!auth.enabled);
    assert_eq!(auth.api_key_header, "X-API-Key");
    let text = format!("{:?}", config.messaging);
    assert!(!text.contains("sqlite"), "no database URL leaks: {text}");

    let scrape = orch.scrape().await;
    assert_eq!(metric(&scrape, "cairn_orchestrator_ready_steps"), Some(2.0));
    assert_eq!(
        metric(
            &scrape,
            "cairn_orchestrator_dlq_entries_total{reason=\"worker_unavailable\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(&scrape, "cairn_orchestrator_tasks{state=\"steps_in_process\"}"),
        Some(2.0)
    );
}

#[tokio::test]
async fn analytics_report_percentages_and_bottlenecks() {
    let dir = TempDir::new("orch-analytics");
    let orch = start_orchestrator(dir.path(), &sqlite_url(dir.path()), &[]).await;
    let _worker = start_worker(dir.path(), &orch.addr, "w1", &[]);
    wait_workers(&orch, 1.0).await;
    let mut c = clients(&orch.addr).await;
    let mut created = Vec::new();
    for n in 0..5 {
        created.push(create(&mut c, "linear_workflow", json!({"even_number": 2, "n": n})).await);
    }
    created.push(create(&mut c, "failing_workflow", json!({"even_number": 2})).await);
    for t in &created {
        finish(&mut c, &t.task_uuid).await;
    }
    let mut a = AnalyticsServiceClient::new(c.channel.clone());
    let m = a
        .get_performance_metrics(pb::GetPerformanceMetricsRequest { hours: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((m.total_tasks, m.completed_tasks, m.failed_tasks), (6, 5, 1));
    assert_eq!(m.completion_rate, 83.33, "a percentage, as tasker returns it");
    assert_eq!(m.error_rate, 16.67);
    assert!(m.analysis_period_start.ends_with('Z') && m.calculated_at.contains('T'));
    let b = a
        .get_bottleneck_analysis(pb::GetBottleneckAnalysisRequest {
            limit: Some(100),
            min_executions: Some(1),
        })
        .await
        .unwrap()
        .into_inner();
    // prepare, always_fails, and the four linear steps.
    assert_eq!(b.slow_steps.len(), 6);
    assert!(
        b.slow_steps
            .windows(2)
            .all(|w| w[0].average_duration_seconds >= w[1].average_duration_seconds)
    );
    let fails = b.slow_steps.iter().find(|s| s.step_name == "always_fails").unwrap();
    assert_eq!(
        (fails.execution_count, fails.error_count, fails.error_rate),
        (3, 3, 100.0)
    );
    let health = b.resource_utilization.unwrap().system_health.unwrap();
    assert_eq!(
        (
            health.complete_tasks,
            health.blocked_by_failures_tasks,
            health.error_tasks,
            health.total_tasks
        ),
        (5, 1, 0, 6),
        "the failed task is held for an operator, not given up"
    );
    assert!(
        b.recommendations.iter().any(|r| r.contains("DLQ")),
        "{:?}",
        b.recommendations
    );
    let bad = a
        .get_bottleneck_analysis(pb::GetBottleneckAnalysisRequest {
            limit: Some(0),
            min_executions: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    let scrape = orch.scrape().await;
    assert!(metric(&scrape, "cairn_orchestrator_retries_total").unwrap() >= 2.0);
    assert!(metric(&scrape, "cairn_orchestrator_commit_seconds_count").unwrap() >= 1.0);
    assert_eq!(metric(&scrape, "cairn_orchestrator_workers"), Some(1.0));
    assert_eq!(metric(&scrape, "cairn_orchestrator_worker_capacity"), Some(16.0));
}

const TIMED: &str = "namespace: ops\nname: timed\nversion: 1.0.0\nsteps:\n  - name: nap\n    handler: demo.sleep\n    timeout_seconds: 1\n    retry:\n      max_attempts: 2\n      backoff_base_ms: 100\n";

#[tokio::test]
async fn a_step_past_its_time_limit_fails_as_timed_out_and_a_stale_task_gets_a_dlq_entry() {
    let dir = TempDir::new("orch-limits");
    let templates_dir = templates_dir(dir.path(), &[("timed.yaml", TIMED)]);
    let orch = start_orchestrator(
        dir.path(),
        &sqlite_url(dir.path()),
        &[
            "--set",
            &templates_dir,
            "--set",
            "orchestrator.staleness_threshold=2500ms",
            "--set",
            "orchestrator.sweep_interval=50ms",
        ],
    )
    .await;
    let _worker = start_worker(dir.path(), &orch.addr, "w1", &[]);
    wait_workers(&orch, 1.0).await;
    let mut c = clients(&orch.addr).await;

    // Each attempt sleeps 10 s against a 1 s limit: two attempts time out,
    // the task is held with the timeout as the DLQ entry's last error.
    let started = std::time::Instant::now();
    let timed = create_in(&mut c, "ops", "timed", json!({"sleep_ms": 10_000})).await;
    let updates = stream_all(&mut c, &timed.task_uuid).await;
    assert_eq!(
        updates.last().unwrap().task_state,
        Some(TaskState::BlockedByFailures as i32)
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "two attempts of a 1 s limit: {:?}",
        started.elapsed()
    );
    let nap = step_named(&mut c, &timed.task_uuid, "nap").await;
    assert_eq!((nap.state, nap.attempts), (StepState::Error as i32, 2));
    let entry = dlq_entry_of(&mut c, &timed.task_uuid).await.unwrap();
    assert_eq!(entry.dlq_reason, pb::DlqReason::MaxRetriesExceeded as i32);
    assert_eq!(
        cairn_client::json::from_struct(entry.metadata.as_ref().unwrap())["error_type"],
        json!("timeout")
    );
    // Resolving manually the only failed step, with nothing left to run,
    // resolves the held task as a whole.
    c.steps
        .resolve_step(pb::ResolveStepRequest {
            task_uuid: timed.task_uuid.clone(),
            step_uuid: nap.step_uuid.clone(),
            action_type: pb::StepManualActionType::ResolveManually as i32,
            performed_by: "oncall".into(),
            reason: "the nap was long enough".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let task = get_task(&mut c, &timed.task_uuid).await.task.unwrap();
    assert_eq!(task.state, TaskState::ResolvedManually as i32);

    // A task sitting in one state past the threshold gets a staleness entry.
    let slow = create(&mut c, "slow_workflow", json!({"sleep_ms": 8_000})).await;
    let stale = eventually(Duration::from_secs(15), "a staleness DLQ entry", || {
        let c = clients(&orch.addr);
        let uuid = slow.task_uuid.clone();
        async move { dlq_entry_of(&mut c.await, &uuid).await }
    })
    .await;
    assert_eq!(stale.dlq_reason, pb::DlqReason::StalenessTimeout as i32);
    assert!(cairn_client::json::from_struct(stale.metadata.as_ref().unwrap())["minutes_in_state"].is_number());
    // Only one pending entry per task, however long it stays.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pending = pending_dlq(&mut c).await;
    assert_eq!(pending.iter().filter(|e| e.task_uuid == slow.task_uuid).count(), 1);
}
