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
pub mod balance;
pub use cairn_log::batch;
pub mod config;
pub mod convert;
pub mod error;
pub mod ids;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod partition;
pub mod producers;
pub mod roller;
pub use cairn_log::segment;
pub mod wal;

use std::time::Duration;

use cairn_proto::cairn::agent::v1::{
    agent_service_server::AgentServiceServer, topic_service_server::TopicServiceServer,
};
use cairn_service::{
    Phase, Runtime, Server,
    auth::{Access, Auth, Policy},
    scope::Scope,
};

pub use config::Config;

/// What each RPC requires. Produce and Fetch check `topics:produce:<topic>`
/// and `topics:consume:<topic>` in the handlers, once the topic is known.
pub fn policy() -> Policy {
    let admin = Access::Scope(Scope::required("topics", "admin", None).unwrap_or_else(|e| unreachable!("{e}")));
    Policy::new()
        .rpc("/cairn.agent.v1.TopicService/CreateTopic", admin.clone())
        .rpc("/cairn.agent.v1.TopicService/DeleteTopic", admin)
        .rpcs(
            &[
                "/cairn.agent.v1.TopicService/ListTopics",
                "/cairn.agent.v1.TopicService/DescribeTopic",
                "/cairn.agent.v1.AgentService/GetMetadata",
                "/cairn.agent.v1.AgentService/Produce",
                "/cairn.agent.v1.AgentService/Fetch",
                "/cairn.agent.v1.AgentService/ListSegments",
            ],
            Access::Authenticated,
        )
        .rpc(
            "/cairn.agent.v1.AgentService/InitProducer",
            Access::AnyName {
                resource: "topics".into(),
                action: "produce".into(),
            },
        )
}

/// Serves until shutdown, then (in the runtime's phases) stops writing,
/// lets calls in flight end, hands partitions off and releases the leases.
pub async fn run(config: Config, rt: Runtime) -> anyhow::Result<()> {
    let bound = rt.bind("grpc", config.grpc.listen).await?;
    let address = if config.agent.advertised_address.is_empty() {
        bound.to_string()
    } else {
        config.agent.advertised_address.clone()
    };
    let node = Node::start(config.clone(), address).await?;
    metrics::register(&node, rt.metrics());
    let api = api::Api::new(node.clone(), config.limits.clone(), config.auth.enabled);
    let max = config.grpc.max_message_bytes;
    let mut server = Server::new(config.grpc.clone(), &rt)
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
    if let Some(auth) = Auth::remote(&config.auth, policy(), rt.metrics())? {
        server = server.with_auth(auth);
    }
    server.start("grpc").await?;
    for (name, task) in [("lease loop", Task::Leases), ("segment roller", Task::Roller)] {
        let (node, stop) = (node.clone(), rt.shutdown_token());
        rt.spawn_critical(name, async move {
            match task {
                Task::Leases => node.run_leases(stop.cancelled_owned()).await,
                Task::Roller => node.run_roller(stop.cancelled_owned()).await,
            }
            Ok(())
        });
    }
    let meta = node.meta.clone();
    let watchdog = rt.readiness().watch(Duration::from_secs(5), move || {
        let meta = meta.clone();
        async move { meta.ping().await.is_ok() }
    });
    // Writes stop at once, so calls in flight end and the drain is short;
    // then partitions are handed off (final segments, leases released) while
    // connections are still open, so clients are redirected at once.
    let closing = node.clone();
    rt.on_shutdown(
        Phase::StopIntake,
        "close partitions",
        Duration::from_secs(1),
        async move {
            watchdog.abort();
            closing.close_all();
        },
    );
    let handoff = config.agent.handoff_timeout + Duration::from_secs(2);
    let leaving = node.clone();
    rt.on_shutdown(Phase::Flush, "hand partitions off", handoff, async move {
        leaving.shutdown().await
    });
    let meta = node.meta.clone();
    rt.on_shutdown(Phase::Close, "close metadata", Duration::from_secs(2), async move {
        meta.close().await
    });
    rt.run_until_stopped().await
}

#[derive(Clone, Copy)]
enum Task {
    Leases,
    Roller,
}

use node::Node;
