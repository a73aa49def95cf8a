//! Lease-holding partition writer: durable WAL, fenced leases, segments on object storage.
//!
//! Only the standard server (health and reflection) exists so far; this
//! service's RPCs arrive with its own issue and do not exist until then.

use std::future::Future;

use tokio::net::TcpListener;

/// Configuration of `cairn-agent`.
pub type Config = cairn_service::BasicConfig<50052>;

/// Serves until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    cairn_service::server::serve_standalone(config.grpc, listener, shutdown).await
}
