//! `cairn tasks …` and `cairn dlq …`: the orchestrator's tasker.v1 API.

use std::{collections::BTreeMap, process::ExitCode, time::Duration};

use anyhow::Context;
use cairn_client::json::{from_struct, to_struct};
use cairn_proto::tasker::v1::{
    self as pb, dlq_service_client::DlqServiceClient, task_service_client::TaskServiceClient,
    task_status_update::UpdateType, template_service_client::TemplateServiceClient,
};
use clap::{Args, Subcommand};

use crate::{
    rpc::{Target, connect, request},
    time::format_timestamp,
};

const DEFAULT_ORCHESTRATOR: &str = "127.0.0.1:50054";

fn addr(target: &Target) -> &str {
    target.addr.as_deref().unwrap_or(DEFAULT_ORCHESTRATOR)
}

/// `cairn tasks …`
#[derive(Args)]
pub struct TasksArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: TasksCommand,
}

#[derive(Subcommand)]
enum TasksCommand {
    /// Start a task of a template; prints its uuid (and, with --wait, its result).
    Create {
        /// `namespace/name@version`, e.g. demo/linear_workflow@1.0.0.
        template: String,
        /// The input context, a JSON object.
        #[arg(long, default_value = "{}")]
        context: String,
        #[arg(long)]
        initiator: Option<String>,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Makes retries of this create return ALREADY_EXISTS instead of a second task.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Watch the task until it ends and print its context's outputs.
        #[arg(long)]
        wait: bool,
    },
    /// Show a task and its steps.
    Get { task_uuid: String },
    /// List tasks, newest first.
    List {
        #[arg(long)]
        namespace: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Task states (snake_case), e.g. --state complete --state error.
        #[arg(long = "state")]
        states: Vec<String>,
        #[arg(long)]
        initiator: Option<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long, default_value_t = 50)]
        limit: i32,
        #[arg(long, default_value_t = 0)]
        offset: i32,
    },
    /// Cancel a task that has not finished.
    Cancel {
        task_uuid: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Show a task's steps changing state live, until it ends.
    Watch { task_uuid: String },
    /// List registered templates.
    Templates {
        #[arg(long)]
        namespace: Option<String>,
    },
}

/// `cairn dlq …`
#[derive(Args)]
pub struct DlqArgs {
    #[command(flatten)]
    target: Target,
    #[command(subcommand)]
    command: DlqCommand,
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List DLQ entries, newest first.
    List {
        /// pending, manually_resolved, permanently_failed or cancelled.
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i32,
    },
    /// Record the outcome of an investigation.
    Resolve {
        dlq_entry_uuid: String,
        /// manually_resolved (default; a held task ends resolved_manually),
        /// permanently_failed (a held task ends in error) or cancelled.
        #[arg(long, default_value = "manually_resolved")]
        status: String,
        #[arg(long)]
        notes: Option<String>,
    },
}

fn task_state_name(n: i32) -> String {
    pb::TaskState::try_from(n)
        .map(|s| s.as_str_name().trim_start_matches("TASK_STATE_").to_lowercase())
        .unwrap_or_else(|_| format!("state {n}"))
}

fn step_state_name(n: i32) -> String {
    pb::StepState::try_from(n)
        .map(|s| s.as_str_name().trim_start_matches("STEP_STATE_").to_lowercase())
        .unwrap_or_else(|_| format!("state {n}"))
}

fn parse_task_state(name: &str) -> anyhow::Result<i32> {
    let wanted = format!("TASK_STATE_{}", name.to_uppercase());
    pb::TaskState::from_str_name(&wanted)
        .map(|s| s as i32)
        .with_context(|| format!("{name:?} is not a task state"))
}

fn parse_dlq_status(name: &str) -> anyhow::Result<i32> {
    let wanted = format!("DLQ_RESOLUTION_STATUS_{}", name.to_uppercase());
    pb::DlqResolutionStatus::from_str_name(&wanted)
        .map(|s| s as i32)
        .with_context(|| format!("{name:?} is not a DLQ resolution status"))
}

fn when(t: Option<&cairn_proto::Timestamp>) -> String {
    t.map(format_timestamp).unwrap_or_else(|| "-".into())
}

fn print_task(t: &pb::Task) {
    println!("task       {}", t.task_uuid);
    println!("template   {}/{}@{}", t.namespace, t.name, t.version);
    println!("state      {}", task_state_name(t.state));
    println!(
        "steps      {}/{} complete, {} in progress, {} failed ({}%)",
        t.completed_steps, t.total_steps, t.in_progress_steps, t.failed_steps, t.completion_percentage
    );
    println!("created    {}", when(t.created_at.as_ref()));
    println!("completed  {}", when(t.completed_at.as_ref()));
    println!("initiator  {}", t.initiator);
    println!("correlation {}", t.correlation_id);
}

/// Runs `cairn tasks …`.
pub async fn tasks(args: TasksArgs) -> anyhow::Result<ExitCode> {
    let key = args.target.api_key.as_deref();
    let channel = connect(addr(&args.target)).await?;
    let mut client = TaskServiceClient::new(channel.clone());
    match args.command {
        TasksCommand::Create {
            template,
            context,
            initiator,
            reason,
            tags,
            idempotency_key,
            wait,
        } => {
            let (namespace, rest) = template
                .split_once('/')
                .context("the template is namespace/name@version")?;
            let (name, version) = rest.split_once('@').context("the template is namespace/name@version")?;
            let context: serde_json::Value = serde_json::from_str(&context).context("--context must be JSON")?;
            let context = to_struct(&context).context("--context must be a JSON object")?;
            let mut req = request(
                pb::CreateTaskRequest {
                    name: name.into(),
                    namespace: namespace.into(),
                    version: version.into(),
                    context: Some(context),
                    initiator,
                    reason,
                    tags,
                    ..Default::default()
                },
                key,
            )?;
            if let Some(k) = idempotency_key {
                req.metadata_mut().insert("idempotency-key", k.parse()?);
            }
            let task = client
                .create_task(req)
                .await?
                .into_inner()
                .task
                .context("no task in the answer")?;
            println!("{}", task.task_uuid);
            if wait {
                let state = watch(&mut client, key, &task.task_uuid, false).await?;
                let context = client
                    .get_task(request(
                        pb::GetTaskRequest {
                            task_uuid: task.task_uuid.clone(),
                            include_steps: false,
                            include_context: true,
                        },
                        key,
                    )?)
                    .await?
                    .into_inner()
                    .context
                    .and_then(|c| c.outputs)
                    .map(|o| from_struct(&o))
                    .unwrap_or_default();
                println!("{} {}", task_state_name(state as i32), context);
                return Ok(if state == pb::TaskState::Complete {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                });
            }
        }
        TasksCommand::Get { task_uuid } => {
            let r = client
                .get_task(request(
                    pb::GetTaskRequest {
                        task_uuid,
                        include_steps: true,
                        include_context: true,
                    },
                    key,
                )?)
                .await?
                .into_inner();
            let task = r.task.context("no task in the answer")?;
            print_task(&task);
            println!("\n{:<24} {:<36} {:>8}  RESULT", "STEP", "STATE", "ATTEMPTS");
            for s in &r.steps {
                let result = s
                    .results
                    .as_ref()
                    .map(|r| from_struct(r).to_string())
                    .unwrap_or_default();
                println!(
                    "{:<24} {:<36} {:>4}/{:<3}  {}",
                    s.name,
                    step_state_name(s.state),
                    s.attempts,
                    s.max_attempts,
                    result
                );
            }
        }
        TasksCommand::List {
            namespace,
            name,
            states,
            initiator,
            tags,
            limit,
            offset,
        } => {
            let states = states
                .iter()
                .map(|s| parse_task_state(s))
                .collect::<anyhow::Result<_>>()?;
            let r = client
                .list_tasks(request(
                    pb::ListTasksRequest {
                        pagination: Some(pb::PaginationRequest {
                            limit: Some(limit),
                            offset: Some(offset),
                        }),
                        namespace,
                        name,
                        states,
                        initiator,
                        tags,
                        ..Default::default()
                    },
                    key,
                )?)
                .await?
                .into_inner();
            println!(
                "{:<36}  {:<34}  {:<24}  {:>5}  CREATED",
                "TASK", "TEMPLATE", "STATE", "DONE"
            );
            for t in &r.tasks {
                println!(
                    "{:<36}  {:<34}  {:<24}  {:>4}%  {}",
                    t.task_uuid,
                    format!("{}/{}@{}", t.namespace, t.name, t.version),
                    task_state_name(t.state),
                    t.completion_percentage.round(),
                    when(t.created_at.as_ref())
                );
            }
            if let Some(p) = r.pagination {
                println!("({} of {}{})", p.count, p.total, if p.has_more { ", more" } else { "" });
            }
        }
        TasksCommand::Cancel { task_uuid, reason } => {
            let r = client
                .cancel_task(request(pb::CancelTaskRequest { task_uuid, reason }, key)?)
                .await?
                .into_inner();
            println!("{}", r.message.unwrap_or_default());
            return Ok(if r.success {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        TasksCommand::Watch { task_uuid } => {
            let state = watch(&mut client, key, &task_uuid, true).await?;
            return Ok(if state == pb::TaskState::Complete {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        TasksCommand::Templates { namespace } => {
            let mut templates = TemplateServiceClient::new(channel);
            let r = templates
                .list_templates(request(pb::ListTemplatesRequest { namespace }, key)?)
                .await?
                .into_inner();
            println!(
                "{:<20}  {:<28}  {:<10}  {:>5}  DESCRIPTION",
                "NAMESPACE", "NAME", "VERSION", "STEPS"
            );
            for t in r.templates {
                println!(
                    "{:<20}  {:<28}  {:<10}  {:>5}  {}",
                    t.namespace,
                    t.name,
                    t.version,
                    t.step_count,
                    t.description.unwrap_or_default()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the task is held in BLOCKED_BY_FAILURES now.
async fn still_blocked(
    client: &mut TaskServiceClient<cairn_service::Client>,
    key: Option<&str>,
    task_uuid: &str,
) -> anyhow::Result<bool> {
    let task = client
        .get_task(request(
            pb::GetTaskRequest {
                task_uuid: task_uuid.into(),
                include_steps: false,
                include_context: false,
            },
            key,
        )?)
        .await?
        .into_inner()
        .task
        .context("no task in the answer")?;
    Ok(task.state == pb::TaskState::BlockedByFailures as i32)
}

/// Follows StreamTaskStatus, printing each change; the final task state
/// (or BLOCKED_BY_FAILURES when the task is held for an operator).
async fn watch(
    client: &mut TaskServiceClient<cairn_service::Client>,
    key: Option<&str>,
    task_uuid: &str,
    verbose: bool,
) -> anyhow::Result<pb::TaskState> {
    // The stream lives as long as the task runs, not the CLI's call timeout.
    let mut req = request(
        pb::StreamTaskStatusRequest {
            task_uuid: task_uuid.into(),
            include_steps: true,
        },
        key,
    )?;
    req.set_timeout(Duration::from_secs(24 * 3600));
    let mut stream = client.stream_task_status(req).await?.into_inner();
    let mut steps: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut last = pb::TaskState::Unspecified;
    while let Some(update) = stream.message().await? {
        let at = when(update.timestamp.as_ref());
        match UpdateType::try_from(update.update_type) {
            Ok(UpdateType::StepStateChange) => {
                if let Some(s) = update.step_update {
                    let state = step_state_name(s.state);
                    steps.insert(s.step_uuid.clone(), (s.name.clone(), state.clone()));
                    let done = steps
                        .values()
                        .filter(|(_, st)| st == "complete" || st == "resolved_manually")
                        .count();
                    if verbose {
                        println!(
                            "{at}  step {:<24} {:<36} attempt {}  [{done}/{} steps done]",
                            s.name,
                            state,
                            s.attempt,
                            steps.len()
                        );
                    }
                }
            }
            _ => {
                if let Some(state) = update.task_state {
                    last = pb::TaskState::try_from(state).unwrap_or(pb::TaskState::Unspecified);
                    if verbose {
                        let extra = update.error_message.map(|e| format!("  ({e})")).unwrap_or_default();
                        println!("{at}  task {}{extra}", task_state_name(state));
                    }
                    // A held task waits for an operator: stop watching if it
                    // is still held (the replay also shows holds it has left).
                    if last == pb::TaskState::BlockedByFailures && still_blocked(client, key, task_uuid).await? {
                        eprintln!(
                            "task {task_uuid} is blocked by a failed step: resolve the step (StepService/ResolveStep) or settle its DLQ entry (cairn dlq resolve)"
                        );
                        break;
                    }
                }
            }
        }
    }
    Ok(last)
}

/// Runs `cairn dlq …`.
pub async fn dlq(args: DlqArgs) -> anyhow::Result<ExitCode> {
    let key = args.target.api_key.as_deref();
    let mut client = DlqServiceClient::new(connect(addr(&args.target)).await?);
    match args.command {
        DlqCommand::List { status, limit } => {
            let status = status.as_deref().map(parse_dlq_status).transpose()?;
            let r = client
                .list_entries(request(
                    pb::ListDlqEntriesRequest {
                        resolution_status: status,
                        limit: Some(limit),
                        offset: None,
                    },
                    key,
                )?)
                .await?
                .into_inner();
            println!(
                "{:<36}  {:<36}  {:<22}  {:<18}  CREATED",
                "ENTRY", "TASK", "REASON", "STATUS"
            );
            for e in r.entries {
                let reason = pb::DlqReason::try_from(e.dlq_reason)
                    .map(|r| r.as_str_name().trim_start_matches("DLQ_REASON_").to_lowercase())
                    .unwrap_or_default();
                let status = pb::DlqResolutionStatus::try_from(e.resolution_status)
                    .map(|r| {
                        r.as_str_name()
                            .trim_start_matches("DLQ_RESOLUTION_STATUS_")
                            .to_lowercase()
                    })
                    .unwrap_or_default();
                println!(
                    "{:<36}  {:<36}  {:<22}  {:<18}  {}",
                    e.dlq_entry_uuid,
                    e.task_uuid,
                    reason,
                    status,
                    when(e.created_at.as_ref())
                );
            }
        }
        DlqCommand::Resolve {
            dlq_entry_uuid,
            status,
            notes,
        } => {
            let r = client
                .update_investigation(request(
                    pb::UpdateDlqInvestigationRequest {
                        dlq_entry_uuid,
                        resolution_status: Some(parse_dlq_status(&status)?),
                        resolution_notes: notes,
                        resolved_by: None,
                        metadata: None,
                    },
                    key,
                )?)
                .await?
                .into_inner();
            println!("{}", r.message);
        }
    }
    Ok(ExitCode::SUCCESS)
}
