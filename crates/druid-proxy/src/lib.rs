//! SQL gateway speaking Apache Druid's gRPC query protocol.
//!
//! Only the standard server (health and reflection) exists so far; this
//! service's RPCs arrive with its own issue and do not exist until then.

/// Configuration of `cairn-druid-proxy`.
pub type Config = cairn_service::BasicConfig<50055>;

/// Serves until shutdown.
pub async fn run(config: Config, rt: cairn_service::Runtime) -> anyhow::Result<()> {
    cairn_service::server::serve_standalone(config.grpc, rt).await
}
