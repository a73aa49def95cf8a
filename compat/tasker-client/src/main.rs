//! Every orchestration RPC through tasker-core's own client against a
//! running cairn-orchestrator (auth off) with `cairn-demo-worker` connected.
//! Each call goes through the client's own response conversions (UUID
//! correlation ids, required sub-messages, health checks present, …); a
//! failure of any is printed and the program exits 1.
//!
//! Usage: tasker-client-compat http://127.0.0.1:50054

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;
use tasker_client::grpc_clients::OrchestrationGrpcClient;
use tasker_shared::models::orchestration::{DlqInvestigationUpdate, DlqResolutionStatus};
use tasker_shared::{models::core::task_request::TaskRequest, types::api::orchestration::StepManualAction};
use uuid::Uuid;

struct Checks {
    failed: usize,
}

impl Checks {
    fn check<T: std::fmt::Debug, E: std::fmt::Display>(&mut self, name: &str, result: Result<T, E>) -> Option<T> {
        match result {
            Ok(v) => {
                let text = format!("{v:?}");
                println!("ok    {name}: {}", text.chars().take(140).collect::<String>());
                Some(v)
            }
            Err(e) => {
                println!("FAIL  {name}: {e}");
                self.failed += 1;
                None
            }
        }
    }
}

async fn wait_status(client: &OrchestrationGrpcClient, task: Uuid, done: &[&str]) -> anyhow::Result<String> {
    let give_up = Instant::now() + Duration::from_secs(60);
    loop {
        let t = client.get_task(task).await?;
        if done.contains(&t.status.as_str()) {
            return Ok(t.status);
        }
        if Instant::now() > give_up {
            bail!("task {task} still {} after 60 s", t.status);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn request(name: &str, context: serde_json::Value) -> TaskRequest {
    TaskRequest::new(name.into(), "demo".into())
        .with_version("1.0.0".into())
        .with_context(context)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50054".into());
    let client = OrchestrationGrpcClient::connect(endpoint.clone())
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    let mut c = Checks { failed: 0 };
    let run = Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id());

    c.check("health_check", client.health_check().await);
    c.check("get_basic_health", client.get_basic_health().await);
    c.check("liveness_probe", client.liveness_probe().await);
    c.check("readiness_probe", client.readiness_probe().await);
    c.check("get_detailed_health", client.get_detailed_health().await);
    c.check("get_config", client.get_config().await);
    c.check("list_templates", client.list_templates(None).await);
    c.check(
        "get_template",
        client.get_template("demo", "linear_workflow", "1.0.0").await,
    );

    let created = c.check(
        "create_task(linear)",
        client
            .create_task(request(
                "linear_workflow",
                json!({"even_number": 2, "run": run.to_string()}),
            ))
            .await,
    );
    if let Some(task) = created {
        let uuid: Uuid = task.task_uuid.parse()?;
        c.check(
            "get_task until complete",
            wait_status(&client, uuid, &["complete"]).await,
        );
        c.check("get_task_context", client.get_task_context(uuid).await);
        c.check("get_task_summary", client.get_task_summary(uuid).await);
        if let Some(steps) = c.check("list_task_steps", client.list_task_steps(uuid).await) {
            if steps.len() != 4 {
                println!("FAIL  list_task_steps: {} steps, expected 4", steps.len());
                c.failed += 1;
            }
            if let Some(s) = steps.first() {
                let step: Uuid = s.step_uuid.parse()?;
                c.check("get_step", client.get_step(uuid, step).await);
                c.check(
                    "get_step_audit_history",
                    client.get_step_audit_history(uuid, step).await,
                );
            }
        }
        c.check("list_tasks", client.list_tasks(50, 0, Some("demo"), None).await);
        c.check(
            "list_tasks(status)",
            client.list_tasks(10, 0, None, Some("complete")).await,
        );
    }

    let failing = c.check(
        "create_task(failing)",
        client
            .create_task(request(
                "failing_workflow",
                json!({"even_number": 2, "run": run.to_string()}),
            ))
            .await,
    );
    if let Some(task) = failing {
        let uuid: Uuid = task.task_uuid.parse()?;
        c.check(
            "get_task until blocked_by_failures",
            wait_status(&client, uuid, &["blocked_by_failures"]).await,
        );
        if let Some(entry) = c.check("get_dlq_entry", client.get_dlq_entry(uuid).await) {
            c.check("list_dlq_entries", client.list_dlq_entries(None).await);
            c.check("get_dlq_stats", client.get_dlq_stats().await);
            c.check(
                "get_investigation_queue",
                client.get_investigation_queue(Some(10)).await,
            );
            c.check(
                "get_staleness_monitoring",
                client.get_staleness_monitoring(Some(10)).await,
            );
            let update = DlqInvestigationUpdate {
                resolution_status: None,
                resolution_notes: Some("looked at it through tasker-client".into()),
                resolved_by: Some("compat".into()),
                metadata: None,
            };
            c.check(
                "update_dlq_investigation",
                client.update_dlq_investigation(entry.dlq_entry_uuid, update).await,
            );
        }
        if let Some(steps) = c.check("list_task_steps(failing)", client.list_task_steps(uuid).await)
            && let Some(s) = steps.iter().find(|s| s.name == "always_fails")
        {
            let step: Uuid = s.step_uuid.parse()?;
            let action = StepManualAction::ResolveManually {
                reason: "compat check".into(),
                resolved_by: "compat".into(),
            };
            c.check(
                "resolve_step_manually",
                client.resolve_step_manually(uuid, step, action).await,
            );
        }
    }

    // A held task given up through its DLQ entry ends in error.
    let given_up = c.check(
        "create_task(failing, to give up)",
        client
            .create_task(request(
                "failing_workflow",
                json!({"even_number": 2, "run": run.to_string(), "give_up": true}),
            ))
            .await,
    );
    if let Some(task) = given_up {
        let uuid: Uuid = task.task_uuid.parse()?;
        c.check(
            "get_task until blocked_by_failures",
            wait_status(&client, uuid, &["blocked_by_failures"]).await,
        );
        if let Some(entry) = c.check("get_dlq_entry", client.get_dlq_entry(uuid).await) {
            let verdict = DlqInvestigationUpdate {
                resolution_status: Some(DlqResolutionStatus::PermanentlyFailed),
                resolution_notes: Some("unfixable".into()),
                resolved_by: Some("compat".into()),
                metadata: None,
            };
            c.check(
                "update_dlq_investigation(permanently_failed)",
                client.update_dlq_investigation(entry.dlq_entry_uuid, verdict).await,
            );
            c.check("get_task until error", wait_status(&client, uuid, &["error"]).await);
        }
    }

    let slow = c.check(
        "create_task(slow)",
        client
            .create_task(request(
                "slow_workflow",
                json!({"sleep_ms": 30000, "run": run.to_string()}),
            ))
            .await,
    );
    if let Some(task) = slow {
        let uuid: Uuid = task.task_uuid.parse()?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.check("cancel_task", client.cancel_task(uuid).await);
        c.check(
            "get_task until cancelled",
            wait_status(&client, uuid, &["cancelled"]).await,
        );
    }

    c.check("get_performance_metrics", client.get_performance_metrics(None).await);
    c.check("get_bottlenecks", client.get_bottlenecks(Some(10), Some(1)).await);

    if c.failed > 0 {
        bail!("{} calls failed", c.failed);
    }
    println!("every call answered and passed tasker-client's conversions");
    Ok(())
}
