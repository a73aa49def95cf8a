//! `cairn consume` and `cairn spans tail` through a real ingest and agent.

#![allow(clippy::unwrap_used)]

use cairn_proto::cairn::agent::v1 as pb;
use cairn_testkit::cluster::{Cluster, agent, create_topic, records, wait_leader};

fn cairn(args: &[&str]) -> String {
    let out = std::process::Command::new(cairn_testkit::binary("cairn"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_reads_any_topic_from_where_asked_and_spans_tail_prints_spans_for_people() {
    let cluster = Cluster::new();
    let a = cluster.start("a", &[]).await;
    create_topic(&a.addr, "t", 1).await;
    wait_leader(&a.addr, "t", 0).await;
    let values: Vec<String> = (0..5).map(|i| format!("v{i}")).collect();
    agent(&a.addr)
        .await
        .produce(pb::ProduceRequest {
            topic: "t".into(),
            records: records(&values),
            ..Default::default()
        })
        .await
        .unwrap();
    let ingest = cluster.start_ingest("ingest", &[&a.addr], &[]).await;

    let all = cairn(&["consume", "--addr", &ingest.addr, "--topic", "t"]);
    assert_eq!(all.lines().collect::<Vec<_>>(), ["v0", "v1", "v2", "v3", "v4"]);
    let from = cairn(&[
        "consume",
        "--addr",
        &ingest.addr,
        "--topic",
        "t",
        "--from",
        "3",
        "--offsets",
    ]);
    assert_eq!(from.lines().collect::<Vec<_>>(), ["0\t3\tv3", "0\t4\tv4"]);
    let latest = cairn(&["consume", "--addr", &ingest.addr, "--topic", "t", "--from", "latest"]);
    assert!(latest.is_empty());
    let max = cairn(&["consume", "--addr", &ingest.addr, "--topic", "t", "--max", "2"]);
    assert_eq!(max.lines().count(), 2);

    // A span through OTLP/HTTP, printed as a person reads it.
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{AnyValue, KeyValue, any_value},
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span},
    };
    use prost::Message;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue("checkout".into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![0xab; 16],
                    span_id: vec![1; 8],
                    name: "charge card".into(),
                    start_time_unix_nano: now,
                    end_time_unix_nano: now + 12_500_000,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    };
    let sent = cairn_testkit::http_post(
        ingest.address("otlp_http"),
        "/v1/traces",
        &[("content-type", "application/x-protobuf")],
        &request.encode_to_vec(),
    )
    .await;
    assert_eq!(sent.status, 200);
    let tail = cairn(&["spans", "tail", "--addr", &ingest.addr, "--since", "1h"]);
    let line = tail.lines().next().expect("one span printed");
    for part in ["checkout", "charge card", "12.500ms", &"ab".repeat(16)] {
        assert!(line.contains(part), "{part:?} in {line:?}");
    }
    let other = cairn(&[
        "spans",
        "tail",
        "--addr",
        &ingest.addr,
        "--since",
        "all",
        "--service",
        "billing",
    ]);
    assert!(other.is_empty(), "filtered by service");
}
