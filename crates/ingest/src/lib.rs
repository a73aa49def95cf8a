//! `cairn-ingest`: Cairn's front door for OpenTelemetry data and its reader
//! of the log. It owns no data: what it receives goes into the agents'
//! durable log through the `cairn-producer` library, and what it serves
//! comes back from segments in the object store plus the not-yet-rolled tail
//! from each partition's leader.
//!
//! Module map: `otlp` (one decoding/validation path: items → records, the
//! `TelemetryRecord` container), `export` (admission against the in-flight
//! byte cap, durable writes, the OTLP/gRPC services), `http` (OTLP/HTTP),
//! `reader` (the log reader: segments from the store, tail from leaders),
//! `spans` (Junjo's ReadSpans: a merge over partitions by append time with
//! the floor rule), `read` (ReadRecords), `config`.
//!
//! Listeners: `grpc` (ReadSpans, ReadRecords; keys checked), `otlp`
//! (OTLP/gRPC), `otlp_http` (OTLP/HTTP), `internal` (ReadSpans without a key,
//! off by default: a trust boundary), `metrics`.

pub mod config;
pub mod export;
pub mod http;
pub mod otlp;
pub mod read;
pub mod reader;
pub mod spans;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use cairn_client::Client;
use cairn_producer::{Acks, Producer};
use cairn_proto::{
    cairn::{
        agent::v1::{self as agent_pb, topic_service_client::TopicServiceClient},
        ingest::v1::read_service_server::ReadServiceServer,
    },
    ingestion::internal_ingestion_service_server::InternalIngestionServiceServer,
};
use cairn_service::{
    Phase, Runtime, Server, ServerConfig,
    auth::{Access, Auth, Policy},
    metrics::prometheus_client::{
        collector::Collector,
        encoding::{DescriptorEncoder, EncodeMetric},
        metrics::{counter::ConstCounter, gauge::ConstGauge},
    },
    scope::Scope,
};
use opentelemetry_proto::tonic::collector::{
    logs::v1::logs_service_server::LogsServiceServer, metrics::v1::metrics_service_server::MetricsServiceServer,
    trace::v1::trace_service_server::TraceServiceServer,
};
use tonic::codec::CompressionEncoding;

pub use config::Config;

use crate::{export::Exporter, otlp::Signal, reader::LogReader};

/// The OTLP export RPCs, by signal.
pub const EXPORT_PATHS: [(&str, Signal); 3] = [
    (
        "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        Signal::Traces,
    ),
    (
        "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        Signal::Logs,
    ),
    (
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
        Signal::Metrics,
    ),
];

/// What each RPC requires. ReadRecords checks `topics:consume:<topic>` in
/// the handler, once the topic is known.
pub fn policy() -> Policy {
    let spans_read = Scope::required("spans", "read", None).unwrap_or_else(|e| unreachable!("{e}"));
    let mut policy = Policy::new()
        .rpc(
            "/ingestion.InternalIngestionService/ReadSpans",
            Access::Scope(spans_read),
        )
        .rpc("/cairn.ingest.v1.ReadService/ReadRecords", Access::Authenticated);
    for (path, signal) in EXPORT_PATHS {
        policy = policy.rpc(path, Access::Scope(signal.scope()));
    }
    policy
}

/// Creates the telemetry topics that do not exist yet.
async fn ensure_topics(config: &Config, key: &str) -> anyhow::Result<()> {
    let topics = &config.ingest.topics;
    let mut last = None;
    for address in &config.ingest.agents {
        let client = Client::connect_lazy(address, &config.ingest.client)?;
        let client = if key.is_empty() { client } else { client.with_key(key)? };
        let mut admin = TopicServiceClient::new(client);
        let mut ok = true;
        for name in [&topics.spans, &topics.logs, &topics.metrics] {
            let request = agent_pb::CreateTopicRequest {
                name: name.clone(),
                config: Some(agent_pb::TopicConfig {
                    partitions: topics.partitions,
                    retention_ms: i64::try_from(topics.retention.as_millis()).unwrap_or(i64::MAX),
                    ..Default::default()
                }),
            };
            match admin.create_topic(request).await {
                Ok(_) => tracing::info!(topic = %name, partitions = topics.partitions, "created topic"),
                Err(status) if status.code() == tonic::Code::AlreadyExists => {}
                Err(status) => {
                    ok = false;
                    last = Some(anyhow::anyhow!("creating topic {name} through {address}: {status}"));
                    break;
                }
            }
        }
        if ok {
            return Ok(());
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no agents configured")))
}

/// The reader's figures, read at scrape time.
struct ReaderCollector(Arc<LogReader>);

impl std::fmt::Debug for ReaderCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReaderCollector")
    }
}

fn encode_one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for ReaderCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let (cache, stats) = (self.0.cache_stats(), self.0.stats());
        let counters = [
            (
                "cairn_ingest_reader_records_from_segments",
                "Records the log reader read from segments in the object store",
                stats.from_segments.load(Relaxed),
            ),
            (
                "cairn_ingest_reader_records_from_leaders",
                "Records the log reader read from partition leaders (the tail)",
                stats.from_leaders.load(Relaxed),
            ),
            (
                "cairn_ingest_segment_cache_hits",
                "Segment block reads answered from the block cache",
                cache.hits.load(Relaxed),
            ),
            (
                "cairn_ingest_segment_cache_misses",
                "Segment block reads that went to the object store",
                cache.misses.load(Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            encode_one(&mut encoder, name, help, &ConstCounter::new(value))?;
        }
        let gauges = [
            (
                "cairn_ingest_reader_partitions_read",
                "Partitions open ReadRecords streams are reading",
                stats.partitions_read.load(Relaxed),
            ),
            (
                "cairn_ingest_reader_lag_records",
                "Records open ReadRecords streams are behind their partitions' high watermarks, summed",
                stats.lag_records.load(Relaxed),
            ),
        ];
        for (name, help, value) in gauges {
            encode_one(&mut encoder, name, help, &ConstGauge::new(value))?;
        }
        Ok(())
    }
}

/// Serves until shutdown, then stops taking exports, lets those in flight
/// finish, and flushes the producer.
pub async fn run(config: Config, rt: Runtime) -> anyhow::Result<()> {
    let key = config.ingest.key();
    let store = cairn_object_store::open(&config.object_store.url, &config.object_store.s3)
        .context("opening the object store")?;
    let mut builder = Producer::builder()
        .bootstrap(config.ingest.agents.iter().cloned())
        .acks(Acks::Durable)
        .delivery_timeout(config.ingest.write_timeout)
        .max_block(Duration::from_secs(1))
        // The agents must not trace the writes of spans: their own spans
        // would come back here as exports, be written, be traced, …
        .untraced(true)
        .buffer_bytes(config.otlp.max_in_flight_bytes.max(32 * 1024 * 1024))
        .metrics(rt.metrics());
    if !key.is_empty() {
        builder = builder.api_key(key.clone());
    }
    let producer = builder.build().context("building the producer")?;
    let reader = Arc::new(LogReader::new(
        config.ingest.agents.clone(),
        config.ingest.client.clone(),
        key.clone(),
        store,
        config.reader.clone(),
        rt.metrics(),
    ));
    rt.metrics()
        .register_collector(Box::new(ReaderCollector(reader.clone())));
    let exporter = Exporter::new(
        producer.clone(),
        config.ingest.topics.clone(),
        config.otlp.clone(),
        config.ingest.write_timeout,
        rt.metrics(),
    );
    let auth = Auth::remote(&config.auth, policy(), rt.metrics())?;
    let spans = spans::Spans::new(reader.clone(), config.ingest.topics.spans.clone());
    let max = config.grpc.max_message_bytes;

    let mut main = Server::new(config.grpc.clone(), &rt)
        .add_service(InternalIngestionServiceServer::new(spans.clone()).max_encoding_message_size(max))
        .add_service(
            ReadServiceServer::new(read::Read::new(reader, config.reader.clone(), auth.is_some()))
                .max_encoding_message_size(max),
        );
    if let Some(auth) = &auth {
        main = main.with_auth(auth.clone());
    }
    main.start("grpc").await?;

    // Requests up to twice the limit are decoded and then refused as
    // RESOURCE_EXHAUSTED (not retryable for OTLP exporters); tonic refuses
    // larger ones itself while decoding, with OUT_OF_RANGE.
    let limit = config.otlp.max_request_bytes.saturating_mul(2);
    let otlp_server = ServerConfig {
        listen: config.otlp.listen,
        max_message_bytes: limit,
        ..config.grpc.clone()
    };
    let receiver = export::Otlp(exporter.clone());
    let mut otlp = Server::new(otlp_server, &rt)
        .with_descriptor_set(opentelemetry_proto::DESCRIPTORS)
        .add_service(
            TraceServiceServer::new(receiver.clone())
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(limit),
        )
        .add_service(
            LogsServiceServer::new(receiver.clone())
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(limit),
        )
        .add_service(
            MetricsServiceServer::new(receiver)
                .accept_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Zstd)
                .max_decoding_message_size(limit),
        );
    if let Some(auth) = &auth {
        otlp = otlp.with_auth(auth.clone());
    }
    otlp.start("otlp").await?;

    if let Some(internal) = config.ingest.internal_address() {
        tracing::warn!(%internal, "ReadSpans is served without keys on the internal listener: keep it on a private network");
        Server::new(
            ServerConfig {
                listen: internal,
                ..config.grpc.clone()
            },
            &rt,
        )
        .add_service(InternalIngestionServiceServer::new(spans).max_encoding_message_size(max))
        .start("internal")
        .await?;
    }

    if let Some(addr) = config.otlp.http_address() {
        let app = http::router(http::Http {
            exporter: exporter.clone(),
            auth: auth.clone(),
        });
        cairn_service::exposition::serve_http(&rt, "otlp_http", addr, app).await?;
    }

    // Serving once the topics exist (the agents may come up after us).
    let (ready, setup, stop) = (rt.readiness().clone(), config.clone(), rt.shutdown_token());
    rt.spawn_critical("create topics", async move {
        let backoff = cairn_client::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut attempt = 0u32;
        loop {
            match ensure_topics(&setup, &key).await {
                Ok(()) => break,
                Err(error) => {
                    if attempt.is_multiple_of(10) {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "cannot create the telemetry topics yet; retrying"
                        );
                    }
                }
            }
            attempt = attempt.saturating_add(1);
            tokio::select! {
                () = tokio::time::sleep(backoff.delay(attempt, None)) => {}
                () = stop.cancelled() => return Ok(()),
            }
        }
        ready.set_serving().await;
        Ok(())
    });
    let flushing = producer.clone();
    rt.on_shutdown(
        Phase::Flush,
        "flush the producer",
        Duration::from_secs(10),
        async move {
            flushing.close().await;
        },
    );
    rt.run_until_stopped().await
}
