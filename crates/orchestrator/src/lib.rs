//! Workflow orchestration: templates, tasks, workers, retries, DLQ.
//!
//! Only the standard server (health and reflection) exists so far; this
//! service's RPCs arrive with its own issue and do not exist until then.
//! [`template`] (templates parsed and checked as DAGs) is the first piece.

pub mod template;

/// Configuration of `cairn-orchestrator`.
pub type Config = cairn_service::BasicConfig<50054>;

/// Serves until shutdown.
pub async fn run(config: Config, rt: cairn_service::Runtime) -> anyhow::Result<()> {
    cairn_service::server::serve_standalone(config.grpc, rt).await
}
