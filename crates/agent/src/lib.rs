//! `cairn-agent`: the lease-holding partition writer. Agents own partitions
//! through leases in the shared metadata database, append produced records to
//! a per-partition WAL with group commit, acknowledge them once durable, and
//! serve reads of their partitions.
//!
//! Module map: `batch` (the frame format), `wal` (append, fsync, recovery),
//! `producers` (idempotence), `partition` (the writer thread, high watermark,
//! reads), `meta` (the metadata database), `node` (identity and the lease
//! loop), `api` (the gRPC edge), `config`, `error`.
//!
//! Segments: the roller (`Node::run_roller`) uploads `[committed, high
//! watermark)` as one segment when it is big or old enough or a committed-ack
//! produce waits, then commits it in metadata under the holder's epoch.
//!
//! The writer deletes WAL files once segments cover them; fetches below the
//! WAL read segments from the object store, so committed records survive
//! losing the agent's disk.
//!
//! SIGTERM and rebalancing hand partitions off clean (`Node::hand_off`);
//! retention deletes whole segments and sweeps orphaned objects.

pub mod api;
pub mod batch;
pub mod config;
pub mod error;
pub mod meta;
pub mod node;
pub mod partition;
pub mod producers;
pub mod reader;
pub mod roller;
pub mod segment;
pub mod wal;

use std::{future::Future, sync::Arc, time::Duration};

use cairn_proto::cairn::agent::v1::{
    agent_service_server::AgentServiceServer, topic_service_server::TopicServiceServer,
};
use cairn_service::task::Background;
use cairn_service::{
    Server,
    auth::{Access, Auth, Policy, RemoteAuthenticator},
    scope::Scope,
};
use tokio::net::TcpListener;

pub use config::Config;

/// What each RPC requires; per-topic scopes are checked in the handlers.
pub fn policy() -> Policy {
    let admin = Access::Scope(Scope::required("topics", "admin", None).unwrap_or_else(|e| unreachable!("{e}")));
    Policy::new()
        .rpc("/cairn.agent.v1.TopicService/CreateTopic", admin.clone())
        .rpc("/cairn.agent.v1.TopicService/DeleteTopic", admin)
}

/// Serves until `shutdown` resolves, then stops writing and releases clean leases.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let address = if config.agent.advertised_address.is_empty() {
        listener.local_addr()?.to_string()
    } else {
        config.agent.advertised_address.clone()
    };
    let node = Node::start(config.clone(), address).await?;
    let api = api::Api::new(node.clone(), config.limits.clone(), config.auth.enabled);
    let max = config.grpc.max_message_bytes;
    let mut server = Server::new(config.grpc.clone())
        .add_service(
            AgentServiceServer::new(api.clone())
                .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        .add_service(
            TopicServiceServer::new(api)
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        );
    if config.auth.enabled {
        let authenticator = Arc::new(RemoteAuthenticator::new(config.auth.clone())?);
        server = server.with_auth(Auth::with_limits(
            authenticator,
            policy(),
            config.auth.failure_burst,
            config.auth.failures_per_sec,
        ));
    } else {
        tracing::warn!("auth is disabled: every caller may do everything");
    }
    let leases = Background::spawn(|stop| node.clone().run_leases(stop));
    let roller = Background::spawn(|stop| node.clone().run_roller(stop));
    let meta = node.meta.clone();
    let readiness = server.readiness();
    let watchdog = readiness.watch(Duration::from_secs(5), move || {
        let meta = meta.clone();
        async move { meta.ping().await.is_ok() }
    });
    // On SIGTERM the partitions are handed off first (final segments, leases
    // released clean), so clients are redirected to other agents at once; only
    // then does the server drain its connections, however long clients keep them.
    let hand_off = {
        let node = node.clone();
        async move {
            shutdown.await;
            watchdog.abort();
            readiness.set_not_serving().await;
            roller.stop().await;
            leases.stop().await;
            node.shutdown().await;
        }
    };
    server.serve(listener, hand_off).await
}

use node::Node;
