//! The OTLP receiver against a real ingest and agent: OTLP's rules for
//! partial success, empty and oversized requests, both transports and all
//! three signals, keys and scopes, and the in-flight cap under overload.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cairn_proto::cairn::ingest::v1::{
    ReadRecordsRequest, TelemetryRecord, read_service_client::ReadServiceClient, telemetry_record::Item,
};
use cairn_testkit::{http_post, metric};
use common::*;
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{ExportLogsServiceRequest, logs_service_client::LogsServiceClient},
        metrics::v1::{ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient},
        trace::v1::ExportTraceServiceResponse,
    },
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    metrics::v1::{Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data},
};
use prost::Message;
use tonic::Code;

/// Every record of `topic` (all partitions) decoded as telemetry records.
async fn stored(addr: &str, topic: &str) -> Vec<TelemetryRecord> {
    let mut client = ReadServiceClient::new(channel(addr).await);
    let mut stream = client
        .read_records(ReadRecordsRequest {
            topic: topic.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        out.extend(m.records.iter().map(|r| TelemetryRecord::decode(&r.value[..]).unwrap()));
    }
    out
}

fn span_names(records: &[TelemetryRecord]) -> Vec<String> {
    let mut names: Vec<String> = records
        .iter()
        .filter_map(|r| match &r.item {
            Some(Item::Span(bytes)) => Some(
                opentelemetry_proto::tonic::trace::v1::Span::decode(&bytes[..])
                    .unwrap()
                    .name,
            ),
            _ => None,
        })
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn malformed_spans_are_rejected_one_by_one_and_the_good_ones_stored() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    let ingest = cluster
        .start_ingest("ingest", &[&a.addr], &["--set", "otlp.max_request_bytes=64KiB"])
        .await;
    let mut client = otlp(ingest.address("otlp")).await;

    let mut zero_trace = span(1);
    zero_trace.trace_id = vec![0; 16];
    let mut short_span = span(2);
    short_span.span_id = vec![7; 3];
    let mut nameless = span(3);
    nameless.name.clear();
    let answer: ExportTraceServiceResponse = client
        .export(request("svc", vec![span(0), zero_trace, short_span, nameless, span(4)]))
        .await
        .unwrap()
        .into_inner();
    let partial = answer
        .partial_success
        .expect("partial success when something was refused");
    assert_eq!(partial.rejected_spans, 3);
    assert!(partial.error_message.contains("trace_id"), "{}", partial.error_message);
    assert_eq!(span_names(&stored(&ingest.addr, "otel.spans").await), ["op-0", "op-4"]);

    let empty = client.export(request("svc", vec![])).await.unwrap().into_inner();
    assert!(
        empty.partial_success.is_none(),
        "an empty request is OK, with no partial_success"
    );
    let full = client.export(request("svc", vec![span(5)])).await.unwrap().into_inner();
    assert!(full.partial_success.is_none(), "full success: partial_success absent");

    // 64 KiB < about 80 KiB < twice the limit.
    let big: Vec<_> = (0..1_400).map(span).collect();
    let refused = client.export(request("svc", big)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        cairn_client::status::retry_after(&refused).is_none(),
        "too large is not retryable"
    );
    assert_eq!(
        stored(&ingest.addr, "otel.spans").await.len(),
        3,
        "a refused request stores nothing"
    );

    let scrape = ingest.scrape().await;
    assert_eq!(
        metric(&scrape, r#"cairn_ingest_items_accepted_total{signal="spans"}"#),
        Some(3.0)
    );
    assert_eq!(
        metric(&scrape, r#"cairn_ingest_items_rejected_total{signal="spans"}"#),
        Some(3.0)
    );
}

#[tokio::test]
async fn gzip_and_zstd_requests_and_logs_and_metrics_land_in_their_topics() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    let ingest = cluster.start_ingest("ingest", &[&a.addr], &[]).await;
    let addr = ingest.address("otlp");
    let mut gzip = otlp(addr)
        .await
        .send_compressed(tonic::codec::CompressionEncoding::Gzip);
    gzip.export(request("svc", vec![span(0)])).await.unwrap();
    let mut zstd = otlp(addr)
        .await
        .send_compressed(tonic::codec::CompressionEncoding::Zstd);
    zstd.export(request("svc", vec![span(1)])).await.unwrap();
    assert_eq!(span_names(&stored(&ingest.addr, "otel.spans").await), ["op-0", "op-1"]);

    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    LogRecord {
                        severity_text: "INFO".into(),
                        ..Default::default()
                    },
                    LogRecord {
                        trace_id: vec![0; 16],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let answer = LogsServiceClient::new(channel(addr).await)
        .export(logs)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.partial_success.unwrap().rejected_log_records, 1);
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "queue.depth".into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint::default(); 3],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let answer = MetricsServiceClient::new(channel(addr).await)
        .export(metrics)
        .await
        .unwrap()
        .into_inner();
    assert!(answer.partial_success.is_none());
    let logs = stored(&ingest.addr, "otel.logs").await;
    assert_eq!(logs.len(), 1);
    assert!(matches!(logs[0].item, Some(Item::LogRecord(_))));
    assert!(!logs[0].resource.is_empty(), "a missing resource is stored named");
    let points = stored(&ingest.addr, "otel.metrics").await;
    assert_eq!(points.len(), 3, "one record per data point");
}

#[tokio::test]
async fn otlp_http_follows_the_spec_for_protobuf_json_compression_and_refusals() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    let ingest = cluster
        .start_ingest("ingest", &[&a.addr], &["--set", "otlp.max_request_bytes=64KiB"])
        .await;
    let http = ingest.address("otlp_http");
    let proto = [("content-type", "application/x-protobuf")];

    let body = request("svc", vec![span(0)]).encode_to_vec();
    let ok = http_post(http, "/v1/traces", &proto, &body).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("content-type"), Some("application/x-protobuf"));
    let answer = ExportTraceServiceResponse::decode(&ok.body[..]).unwrap();
    assert!(answer.partial_success.is_none());

    // gzip-encoded protobuf, with one malformed span.
    let mut bad = span(2);
    bad.trace_id.clear();
    let raw = request("svc", vec![span(1), bad]).encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &raw).unwrap();
    let partial = http_post(
        http,
        "/v1/traces",
        &[("content-type", "application/x-protobuf"), ("content-encoding", "gzip")],
        &gz.finish().unwrap(),
    )
    .await;
    assert_eq!(partial.status, 200);
    let answer = ExportTraceServiceResponse::decode(&partial.body[..]).unwrap();
    assert_eq!(answer.partial_success.unwrap().rejected_spans, 1);

    // JSON, with hex ids and string nanos, as OTLP/JSON spells them.
    let json = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"js"}}]},
        "scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
        "name":"op-json","startTimeUnixNano":"1544712660000000000","endTimeUnixNano":"1544712661000000000"}]}]}]}"#;
    let ok = http_post(
        http,
        "/v1/traces",
        &[("content-type", "application/json")],
        json.as_bytes(),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(ok.header("content-type"), Some("application/json"));
    let names = span_names(&stored(&ingest.addr, "otel.spans").await);
    assert_eq!(names, ["op-0", "op-1", "op-json"]);

    let garbage = http_post(http, "/v1/traces", &proto, b"\xff\xff\xff").await;
    assert_eq!(garbage.status, 400);
    let status = tonic_types::Status::decode(&garbage.body[..]).unwrap();
    assert_eq!(
        status.code,
        Code::InvalidArgument as i32,
        "the body is a google.rpc.Status"
    );
    let text = http_post(http, "/v1/traces", &[("content-type", "text/plain")], b"hi").await;
    assert_eq!(text.status, 415);
    let brotli = http_post(
        http,
        "/v1/traces",
        &[("content-type", "application/x-protobuf"), ("content-encoding", "br")],
        &body,
    )
    .await;
    assert_eq!(brotli.status, 415);
    let big = request("svc", (0..2_000).map(span).collect()).encode_to_vec();
    assert_eq!(http_post(http, "/v1/traces", &proto, &big).await.status, 413);
    // A small gzip body that inflates past the limit.
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut bomb, &vec![0u8; 1024 * 1024]).unwrap();
    let inflated = http_post(
        http,
        "/v1/traces",
        &[("content-type", "application/x-protobuf"), ("content-encoding", "gzip")],
        &bomb.finish().unwrap(),
    )
    .await;
    assert_eq!(inflated.status, 413);
    let empty = http_post(http, "/v1/logs", &proto, b"").await;
    assert_eq!(empty.status, 200, "an empty request is OK");
    assert_eq!(
        stored(&ingest.addr, "otel.spans").await.len(),
        3,
        "refusals stored nothing"
    );
}

#[tokio::test]
async fn past_the_in_flight_cap_exports_are_refused_retryably_and_nothing_acknowledged_is_lost() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    let ingest = cluster
        .start_ingest(
            "ingest",
            &[&a.addr],
            &[
                "--set",
                "otlp.max_request_bytes=256KiB",
                "--set",
                "otlp.max_in_flight_bytes=1MiB",
                "--set",
                "ingest.write_timeout=20s",
            ],
        )
        .await;
    let addr = ingest.address("otlp").to_owned();
    // The agent stops answering: accepted exports wait for durability and
    // hold their bytes; beyond the cap, exports are refused at once.
    a.pause();
    let sends: Vec<_> = (0..24u64)
        .map(|i| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let spans: Vec<_> = (i * 3_000..(i + 1) * 3_000).map(span).collect();
                otlp(&addr).await.export(request("svc", spans)).await.map(|_| i)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", ingest.pid()))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")
                .map(|v| v.trim().trim_end_matches(" kB").parse::<u64>().unwrap())
        })
        .unwrap();
    let in_flight = metric(&ingest.scrape().await, "cairn_ingest_in_flight_bytes").unwrap();
    assert!(in_flight <= 1024.0 * 1024.0, "{in_flight} bytes held");
    a.resume();
    let mut acked = Vec::new();
    let mut refused = 0;
    for send in sends {
        match send.await.unwrap() {
            Ok(i) => acked.push(i),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(cairn_client::status::retry_after(&status).is_some(), "with retry info");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "some exports were refused past the cap");
    assert!(!acked.is_empty());
    assert!(rss_kib < 400 * 1024, "ingest RSS stayed bounded: {rss_kib} KiB");
    let names = span_names(&stored(&ingest.addr, "otel.spans").await);
    for i in acked {
        for n in i * 3_000..(i + 1) * 3_000 {
            assert!(
                names.binary_search(&format!("op-{n}")).is_ok(),
                "acknowledged span op-{n} is stored"
            );
        }
    }
    let scrape = ingest.scrape().await;
    assert!(
        metric(
            &scrape,
            r#"cairn_ingest_items_refused_total{signal="spans",reason="overloaded"}"#
        )
        .unwrap()
            >= 1.0
    );
}
