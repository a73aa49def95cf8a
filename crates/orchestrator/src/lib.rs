//! `cairn-orchestrator`: multi-step workflows. A template is a DAG of steps;
//! a task is one run of a template with an input context; steps become ready
//! along the DAG and run on workers connected over a streaming RPC.
//!
//! Its public API is tasker-core's `tasker.v1` (WIRE-tasker.md), field for
//! field; workers use Cairn's own `cairn.orchestrator.v1.WorkerService`.
//!
//! Module map: `template` (YAML templates checked as DAGs), `schema` (the
//! JSON Schema subset for input contexts), `state` (the task and step state
//! machines: the one place transitions are judged), `store` (SQL, one
//! transaction per engine round), `engine` (the single writer: commands in,
//! group commit, then answers, assignments and events out), `workers` (the
//! worker stream), `api` (Task, Step and Template services), `ops`
//! (Analytics, DLQ, Health, Config), `convert` (rows to tasker messages),
//! `metrics`, `config`.

pub mod api;
pub mod config;
pub mod convert;
pub mod engine;
pub mod metrics;
pub mod ops;
pub mod schema;
pub mod state;
pub mod store;
pub mod template;
pub mod workers;

use std::path::Path;

use anyhow::Context as _;
use cairn_proto::{
    cairn::orchestrator::v1::worker_service_server::WorkerServiceServer,
    tasker::v1::{
        analytics_service_server::AnalyticsServiceServer, config_service_server::ConfigServiceServer,
        dlq_service_server::DlqServiceServer, health_service_server::HealthServiceServer,
        step_service_server::StepServiceServer, task_service_server::TaskServiceServer,
        template_service_server::TemplateServiceServer,
    },
};
use cairn_service::{
    Runtime, Server,
    auth::{Access, Auth, Policy},
    scope::Scope,
};

pub use config::Config;

use crate::{
    engine::{Command, Engine, EngineHandle},
    template::Template,
};

/// tasker's permission of every tasker.v1 RPC (WIRE-tasker.md), and the
/// worker stream's; health RPCs are open.
pub const PERMISSIONS: [(&str, &str); 24] = [
    ("/tasker.v1.TaskService/CreateTask", "tasks:create"),
    ("/tasker.v1.TaskService/GetTask", "tasks:read"),
    ("/tasker.v1.TaskService/GetTaskSummary", "tasks:read"),
    ("/tasker.v1.TaskService/StreamTaskStatus", "tasks:read"),
    ("/tasker.v1.TaskService/ListTasks", "tasks:list"),
    ("/tasker.v1.TaskService/CancelTask", "tasks:cancel"),
    ("/tasker.v1.TaskService/GetTaskContext", "tasks:context_read"),
    ("/tasker.v1.StepService/GetStep", "steps:read"),
    ("/tasker.v1.StepService/ListSteps", "steps:read"),
    ("/tasker.v1.StepService/GetStepAudit", "steps:read"),
    ("/tasker.v1.StepService/ResolveStep", "steps:resolve"),
    ("/tasker.v1.TemplateService/ListTemplates", "templates:read"),
    ("/tasker.v1.TemplateService/GetTemplate", "templates:read"),
    (
        "/tasker.v1.AnalyticsService/GetPerformanceMetrics",
        "system:analytics_read",
    ),
    (
        "/tasker.v1.AnalyticsService/GetBottleneckAnalysis",
        "system:analytics_read",
    ),
    ("/tasker.v1.DlqService/ListEntries", "dlq:read"),
    ("/tasker.v1.DlqService/GetEntryByTask", "dlq:read"),
    ("/tasker.v1.DlqService/GetInvestigationQueue", "dlq:read"),
    ("/tasker.v1.DlqService/GetStalenessMonitoring", "dlq:read"),
    ("/tasker.v1.DlqService/UpdateInvestigation", "dlq:update"),
    ("/tasker.v1.DlqService/GetStats", "dlq:stats"),
    ("/tasker.v1.ConfigService/GetConfig", "system:config_read"),
    ("/cairn.orchestrator.v1.WorkerService/Connect", "workers:connect"),
    // Listed so the table is complete; the health RPCs below are open.
    ("/tasker.v1.HealthService/CheckHealth", ""),
];

const OPEN: [&str; 4] = [
    "/tasker.v1.HealthService/CheckHealth",
    "/tasker.v1.HealthService/CheckLiveness",
    "/tasker.v1.HealthService/CheckReadiness",
    "/tasker.v1.HealthService/CheckDetailedHealth",
];

/// What each RPC requires.
pub fn policy() -> Policy {
    let mut policy = Policy::new().rpcs(&OPEN, Access::Open);
    for (path, permission) in PERMISSIONS {
        if permission.is_empty() {
            continue;
        }
        let scope = Scope::parse(permission).unwrap_or_else(|e| unreachable!("{e}"));
        policy = policy.rpc(path, Access::Scope(scope));
    }
    policy
}

/// Templates in `dir` (`*.yaml`, `*.yml`), in name order.
pub fn read_templates(dir: &Path) -> anyhow::Result<Vec<Template>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading orchestrator.templates_dir {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            Template::from_yaml(&text).with_context(|| format!("template {}", p.display()))
        })
        .collect()
}

/// Serves until shutdown.
pub async fn run(config: Config, rt: Runtime) -> anyhow::Result<()> {
    let store = store::Store::connect(&config.database.url, config.database.max_connections)
        .await
        .context("opening the orchestrator database")?;
    let metrics = metrics::EngineMetrics::default();
    metrics.register(rt.metrics());
    let (engine, handle, rx) = Engine::start(store.for_engine(), config.orchestrator.engine(), metrics)
        .await
        .context("starting the engine")?;
    let closing = rt.closing_token();
    rt.spawn_critical("engine", engine.run(rx, closing));
    if let Some(dir) = config.orchestrator.templates_dir() {
        let templates = read_templates(&dir)?;
        let count = templates.len();
        handle
            .ask(|reply| Command::Register { templates, reply })
            .await
            .map_err(|s| anyhow::anyhow!("registering templates from {}: {}", dir.display(), s.message()))?;
        tracing::info!(count, dir = %dir.display(), "templates loaded");
    }
    let auth = Auth::remote(&config.auth, policy(), rt.metrics())?;
    serve(&config, &rt, store, handle, auth).await?;
    rt.readiness().set_serving().await;
    rt.run_until_stopped().await
}

async fn serve(
    config: &Config,
    rt: &Runtime,
    store: store::Store,
    handle: EngineHandle,
    auth: Option<Auth>,
) -> anyhow::Result<()> {
    let api = api::Api {
        store,
        engine: handle.clone(),
        retry_after: config.orchestrator.retry_after,
    };
    let ops = ops::Ops {
        api: api.clone(),
        environment: config.orchestrator.environment.clone(),
        auth_enabled: auth.is_some(),
        max_connections: config.database.max_connections,
        staleness_minutes: i64::try_from(config.orchestrator.staleness_threshold.as_secs() / 60).unwrap_or(60),
    };
    let max = config.grpc.max_message_bytes;
    let mut server = Server::new(config.grpc.clone(), rt)
        .add_service(TaskServiceServer::new(api.clone()).max_decoding_message_size(max))
        .add_service(StepServiceServer::new(api.clone()).max_decoding_message_size(max))
        .add_service(TemplateServiceServer::new(api))
        .add_service(AnalyticsServiceServer::new(ops.clone()))
        .add_service(DlqServiceServer::new(ops.clone()))
        .add_service(HealthServiceServer::new(ops.clone()))
        .add_service(ConfigServiceServer::new(ops))
        .add_service(
            WorkerServiceServer::new(workers::Workers::new(
                handle,
                config.orchestrator.max_worker_concurrency,
            ))
            .max_decoding_message_size(max),
        );
    if let Some(auth) = auth {
        server = server.with_auth(auth);
    }
    server.start("grpc").await?;
    Ok(())
}
