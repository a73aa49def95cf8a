//! The ingest under load, through real `cairn-agent` and `cairn-ingest`
//! processes (release builds) on a local object store:
//!
//! 1. OTLP/gRPC export throughput: pre-built `ExportTraceServiceRequest`s of
//!    512 spans, gzip-compressed once up front, sent from several HTTP/2
//!    connections with a few requests in flight on each; every acknowledged
//!    span is durable (the ingest's producer uses durable acks). Prints
//!    spans/s and the peak RSS of the ingest and the agent.
//! 2. Read throughput of everything written: ReadSpans pages (Junjo's poller)
//!    and one ReadRecords stream, first from the tail (the leader), then
//!    after the agent handed every partition off and lost its WAL (segments
//!    only, cold cache), then again (warm cache).
//! 3. Export ack → a following ReadRecords stream delivering the span, p50 and
//!    p99, at a modest rate with the throughput load gone.
//!
//! Build first: `cargo build --release -p cairn-agent -p cairn-ingest`, then
//! `cargo bench -p cairn-ingest --bench ingest`. Env: BENCH_SECS (15),
//! BENCH_CONNECTIONS (4), BENCH_IN_FLIGHT (4 per connection), BENCH_PARTITIONS
//! (4), BENCH_LATENCY_SAMPLES (300).

#![allow(clippy::unwrap_used)]

use std::{
    io::Write,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use cairn_proto::{
    cairn::ingest::v1::{
        ReadRecordsRequest, StartPosition, read_service_client::ReadServiceClient, start_position::Position,
    },
    ingestion::{ReadSpansRequest, internal_ingestion_service_client::InternalIngestionServiceClient},
};
use cairn_testkit::{Process, cluster::Cluster, peak_rss_mib, percentile};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode},
};
use prost::Message;
use tonic::transport::Channel;

const SPANS_PER_REQUEST: usize = 512;
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

fn env(name: &str, default: u64) -> u64 {
    cairn_testkit::env_or(name, default)
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

/// A span such as an HTTP server's instrumentation makes: ids unique to `n`,
/// a handful of attributes, eight spans to a trace.
fn span(n: u64, now_ns: u64) -> Span {
    let trace = n / 8;
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&(trace.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1).to_be_bytes());
    trace_id[8..].copy_from_slice(&trace.to_be_bytes());
    Span {
        trace_id: trace_id.to_vec(),
        span_id: (n + 1).to_be_bytes().to_vec(),
        parent_span_id: if n.is_multiple_of(8) {
            Vec::new()
        } else {
            (n - n % 8 + 1).to_be_bytes().to_vec()
        },
        name: format!("GET /api/orders/{{id}} step {}", n % 8),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: now_ns + n * 1_000,
        end_time_unix_nano: now_ns + n * 1_000 + 250_000 + (n % 97) * 1_000,
        attributes: vec![
            string("http.request.method", "GET"),
            string("url.path", &format!("/api/orders/{}", n % 10_000)),
            int(
                "http.response.status_code",
                if n.is_multiple_of(50) { 500 } else { 200 },
            ),
            string("server.address", "orders.internal"),
            string("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64)"),
        ],
        status: Some(Status {
            code: if n.is_multiple_of(50) {
                StatusCode::Error as i32
            } else {
                StatusCode::Unset as i32
            },
            message: String::new(),
        }),
        ..Default::default()
    }
}

fn export_request(spans: Vec<Span>, service: &str) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    string("service.name", service),
                    string("service.version", "1.4.2"),
                    string("host.name", "bench-host-1"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "opentelemetry-instrumentation-http".into(),
                    version: "0.50b0".into(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A gRPC message frame of `request`, gzip-compressed: what an SDK exporter
/// with gzip puts on the wire.
fn gzip_frame(request: &ExportTraceServiceRequest) -> (Bytes, usize) {
    let raw = request.encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).unwrap();
    let compressed = gz.finish().unwrap();
    let mut frame = Vec::with_capacity(5 + compressed.len());
    frame.push(1);
    frame.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
    frame.extend_from_slice(&compressed);
    (Bytes::from(frame), raw.len())
}

/// Sends one pre-built Export; `Ok` only for grpc-status 0.
async fn send(channel: &mut Channel, frame: Bytes) -> Result<(), String> {
    use http_body_util::BodyExt;
    use tower::{Service, ServiceExt};
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://ingest{EXPORT_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-encoding", "gzip")
        .header("grpc-accept-encoding", "identity")
        .body(tonic::body::Body::new(http_body_util::Full::new(frame)))
        .unwrap();
    let response = channel
        .ready()
        .await
        .map_err(|e| e.to_string())?
        .call(request)
        .await
        .map_err(|e| e.to_string())?;
    let headers_status = response.headers().get("grpc-status").cloned();
    let collected = response.into_body().collect().await.map_err(|e| e.to_string())?;
    let status = headers_status.or_else(|| collected.trailers().and_then(|t| t.get("grpc-status").cloned()));
    match status.as_ref().map(|s| s.as_bytes()) {
        Some(b"0") => Ok(()),
        other => Err(format!("grpc-status {other:?}")),
    }
}

async fn throughput(otlp: &str) -> u64 {
    let secs = env("BENCH_SECS", 15);
    let connections = env("BENCH_CONNECTIONS", 4);
    let in_flight = env("BENCH_IN_FLIGHT", 4);
    // Distinct requests so spans differ in ids across the run's first pass.
    let now = now_ns();
    let built: Vec<(Bytes, usize)> = (0..64u64)
        .map(|r| {
            let spans = (0..SPANS_PER_REQUEST as u64)
                .map(|i| span(r * SPANS_PER_REQUEST as u64 + i, now))
                .collect();
            gzip_frame(&export_request(spans, "bench-orders"))
        })
        .collect();
    let raw = built[0].1;
    println!(
        "export requests: {SPANS_PER_REQUEST} spans, {raw} B protobuf, {} B gzip ({:.0} B/span raw)",
        built[0].0.len() - 5,
        raw as f64 / SPANS_PER_REQUEST as f64
    );
    let frames: Vec<Bytes> = built.into_iter().map(|(frame, _)| frame).collect();
    let frames = Arc::new(frames);
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let channel = cairn_testkit::cluster::channel(otlp).await;
        for f in 0..in_flight {
            let (mut channel, frames, acked, failed, stop, latencies) = (
                channel.clone(),
                frames.clone(),
                acked.clone(),
                failed.clone(),
                stop.clone(),
                latencies.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut i = (c * in_flight + f) as usize;
                let mut mine = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    match send(&mut channel, frames[i % frames.len()].clone()).await {
                        Ok(()) => {
                            acked.fetch_add(SPANS_PER_REQUEST as u64, Ordering::Relaxed);
                            mine.push(sent.elapsed().as_secs_f64() * 1000.0);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                    i += 1;
                }
                latencies.lock().unwrap().extend(mine);
            }));
        }
    }
    // A second to warm up, then count over the measured window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let from = acked.load(Ordering::Relaxed);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let spans = acked.load(Ordering::Relaxed) - from;
    let elapsed = window.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "export: {connections} connections x {in_flight} in flight, {:.0} spans/s acknowledged durable \
         ({:.0} requests/s) over {secs} s, {} refused or failed requests; request latency p50 {:.1} ms, p99 {:.1} ms \
         ({} spans in all, {:.1} s)",
        spans as f64 / elapsed,
        spans as f64 / elapsed / SPANS_PER_REQUEST as f64,
        failed.load(Ordering::Relaxed),
        percentile(&l, 0.5),
        percentile(&l, 0.99),
        acked.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
    );
    acked.load(Ordering::Relaxed)
}

/// Pages ReadSpans from the empty key with batches of 10,000; spans read.
async fn read_spans(addr: &str, label: &str) -> u64 {
    let mut client = InternalIngestionServiceClient::new(cairn_testkit::cluster::channel(addr).await)
        .max_decoding_message_size(64 << 20);
    let started = Instant::now();
    let mut key = Vec::new();
    let mut spans = 0u64;
    loop {
        let mut stream = client
            .read_spans(ReadSpansRequest {
                start_key_ulid: key.clone(),
                batch_size: 10_000,
            })
            .await
            .unwrap()
            .into_inner();
        let mut got = 0;
        while let Some(m) = stream.message().await.unwrap() {
            key = m.key_ulid;
            if !m.span_bytes.is_empty() {
                got += 1;
            }
        }
        spans += got;
        if got == 0 {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ReadSpans, {label}: {spans} spans in {secs:.2} s = {:.0} spans/s",
        spans as f64 / secs
    );
    spans
}

/// One ReadRecords stream over every partition of the spans topic.
async fn read_records(addr: &str, label: &str) -> u64 {
    let mut client =
        ReadServiceClient::new(cairn_testkit::cluster::channel(addr).await).max_decoding_message_size(64 << 20);
    let started = Instant::now();
    let mut stream = client
        .read_records(ReadRecordsRequest {
            topic: "otel.spans".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut records, mut bytes) = (0u64, 0u64);
    while let Some(m) = stream.message().await.unwrap() {
        records += m.records.len() as u64;
        bytes += m.records.iter().map(|r| r.value.len() as u64).sum::<u64>();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ReadRecords, {label}: {records} records in {secs:.2} s = {:.0} records/s, {:.1} MB/s",
        records as f64 / secs,
        bytes as f64 / secs / 1e6
    );
    records
}

async fn reader_sources(ingest: &Process) -> String {
    let scrape = ingest.scrape().await;
    let m = |s| cairn_testkit::metric(&scrape, s).unwrap_or(0.0);
    format!(
        "records from segments {:.0}, from leaders {:.0}; block cache hits {:.0}, misses {:.0}",
        m("cairn_ingest_reader_records_from_segments_total"),
        m("cairn_ingest_reader_records_from_leaders_total"),
        m("cairn_ingest_segment_cache_hits_total"),
        m("cairn_ingest_segment_cache_misses_total"),
    )
}

/// Export ack → delivery on a following ReadRecords stream.
async fn ack_to_read(ingest: &Process) {
    let samples = env("BENCH_LATENCY_SAMPLES", 300);
    let mut reader = ReadServiceClient::new(cairn_testkit::cluster::channel(&ingest.addr).await);
    let mut stream = reader
        .read_records(ReadRecordsRequest {
            topic: "otel.spans".into(),
            start: Some(StartPosition {
                position: Some(Position::Latest(true)),
            }),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let acks: Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    let seen = {
        let acks = acks.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut early = 0;
            while (latencies.len() as u64) < samples {
                let Ok(Some(m)) = stream.message().await else { break };
                let arrived = Instant::now();
                for r in m.records {
                    let record = cairn_ingest::otlp::decode_record(&r.value).unwrap();
                    let Ok(Some(cairn_ingest::otlp::Decoded::Span(span))) = cairn_ingest::otlp::decode_item(&record)
                    else {
                        continue;
                    };
                    // Wait for the ack to be noted (the stream may deliver first).
                    let mut acked = None;
                    for _ in 0..200 {
                        acked = acks.lock().unwrap().get(&span.name).copied();
                        if acked.is_some() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    if let Some(acked) = acked {
                        let ms = arrived.saturating_duration_since(acked).as_secs_f64() * 1000.0;
                        if arrived < acked {
                            early += 1;
                        }
                        latencies.push(ms);
                    }
                }
            }
            (latencies, early)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut client = TraceServiceClient::new(cairn_testkit::cluster::channel(ingest.address("otlp")).await);
    let now = now_ns();
    for i in 0..samples {
        let mut s = span(10_000_000 + i, now);
        s.name = format!("latency-{i}");
        client.export(export_request(vec![s], "bench-latency")).await.unwrap();
        acks.lock().unwrap().insert(format!("latency-{i}"), Instant::now());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut l, early) = tokio::time::timeout(Duration::from_secs(30), seen)
        .await
        .unwrap()
        .unwrap();
    l.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "export ack -> following ReadRecords delivery: {} samples (one span per export, 50/s), p50 {:.2} ms, \
         p99 {:.2} ms, max {:.2} ms ({early} delivered before the ack reached the client, counted as 0)",
        l.len(),
        percentile(&l, 0.5),
        percentile(&l, 0.99),
        l.last().copied().unwrap_or(0.0)
    );
}

#[tokio::main]
async fn main() {
    let partitions = env("BENCH_PARTITIONS", 4);
    let cluster = Cluster::new();
    let quiet = ["--set", "telemetry.log=warn"];
    let mut agent = cluster.start("agent", &quiet).await;
    let settings = [
        "--set".to_owned(),
        "telemetry.log=warn".to_owned(),
        "--set".to_owned(),
        "metrics.listen=127.0.0.1:0".to_owned(),
        "--set".to_owned(),
        format!("ingest.topics.partitions={partitions}"),
    ];
    let settings: Vec<&str> = settings.iter().map(String::as_str).collect();
    let ingest = cluster.start_ingest("ingest", &[&agent.addr], &settings).await;
    for p in 0..partitions as u32 {
        cairn_testkit::cluster::wait_leader(&agent.addr, "otel.spans", p).await;
    }

    let written = throughput(ingest.address("otlp")).await;
    println!(
        "peak RSS: ingest {:.0} MiB, agent {:.0} MiB",
        peak_rss_mib(&ingest),
        peak_rss_mib(&agent)
    );

    let tail = read_spans(&ingest.addr, "tail and segments as found").await;
    assert_eq!(tail, written, "ReadSpans returned every acknowledged span");
    read_records(&ingest.addr, "tail and segments as found").await;
    println!("  {}", reader_sources(&ingest).await);

    // Every partition handed off (rolled into segments), the WAL gone, and a
    // fresh ingest with a cold cache: reads come from the object store only.
    let mut ingest = ingest;
    assert_eq!(ingest.terminate(Duration::from_secs(60)).await, Some(0));
    assert_eq!(agent.terminate(Duration::from_secs(120)).await, Some(0));
    let _ = std::fs::remove_dir_all(cluster.data_dir("agent").join("wal"));
    let agent = cluster.start("agent", &quiet).await;
    for p in 0..partitions as u32 {
        cairn_testkit::cluster::wait_leader(&agent.addr, "otel.spans", p).await;
    }
    let ingest = cluster.start_ingest("ingest", &[&agent.addr], &settings).await;
    let cold = read_spans(&ingest.addr, "segments only, cold cache").await;
    assert_eq!(cold, written, "every acknowledged span from segments");
    read_spans(&ingest.addr, "segments only, warm cache").await;
    read_records(&ingest.addr, "segments only, warm cache").await;
    println!("  {}", reader_sources(&ingest).await);
    println!(
        "peak RSS of the reading ingest: {:.0} MiB (block cache limit 256 MiB)",
        peak_rss_mib(&ingest)
    );

    ack_to_read(&ingest).await;
}
