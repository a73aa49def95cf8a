//! OTLP span receiver and streaming log reader.
//!
//! Only the standard server (health and reflection) exists so far; this
//! service's RPCs arrive with its own issue and do not exist until then.

/// Configuration of `cairn-ingest`.
pub type Config = cairn_service::BasicConfig<50053>;

/// Serves until shutdown.
pub async fn run(config: Config, rt: cairn_service::Runtime) -> anyhow::Result<()> {
    cairn_service::server::serve_standalone(config.grpc, rt).await
}
