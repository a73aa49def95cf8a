//! `cairn-agent`: the lease-holding partition writer.

pub mod batch;
pub mod error;
pub mod wal;

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
