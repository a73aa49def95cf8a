//! Cairn tracing itself into its own ingest: an agent exporting its spans to
//! the ingest that writes through it must not trace those writes, or every
//! export would cause spans that cause the next export, for ever.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use cairn_proto::cairn::agent::v1 as pb;
use cairn_testkit::{eventually, free_port};
use common::*;
use opentelemetry_proto::tonic::{common::v1::any_value, resource::v1::Resource, trace::v1::Span};
use prost::Message;

/// Every retained span as (service.name, span name).
async fn all_spans(addr: &str) -> Vec<(String, String)> {
    page(addr, &[], 10_000)
        .await
        .unwrap()
        .iter()
        .filter(|m| !m.span_bytes.is_empty())
        .map(|m| {
            let resource = Resource::decode(&m.resource_bytes[..]).unwrap();
            let service = resource
                .attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            (service, Span::decode(&m.span_bytes[..]).unwrap().name)
        })
        .collect()
}

#[tokio::test]
async fn an_agent_traces_into_the_ingest_but_not_the_ingest_writes_of_its_spans() {
    let otlp_port = free_port();
    let cluster = Cluster::new();
    let endpoint = format!("telemetry.otlp_endpoint=http://127.0.0.1:{otlp_port}");
    let a = cluster.start("a", &["--set", &endpoint]).await;
    let listen = format!("otlp.listen=127.0.0.1:{otlp_port}");
    let ingest = cluster.start_ingest("ingest", &[&a.addr], &["--set", &listen]).await;
    // Exports the ingest writes through the agent, then a call of our own
    // that the agent samples and exports (after the writes, so its spans of
    // them, if it made any, are exported no later).
    export(ingest.address("otlp"), 0, 40, 10).await;
    agent(&a.addr)
        .await
        .get_metadata(pb::GetMetadataRequest::default())
        .await
        .unwrap();
    let spans = eventually(Duration::from_secs(40), "the agent's span of our call", || async {
        let spans = all_spans(&ingest.addr).await;
        spans
            .iter()
            .any(|(service, name)| service == "cairn-agent" && name.ends_with("/GetMetadata"))
            .then_some(spans)
    })
    .await;
    assert_eq!(spans.iter().filter(|(s, _)| s == "svc").count(), 40, "{spans:?}");
    let writes: Vec<_> = spans
        .iter()
        .filter(|(service, name)| service == "cairn-agent" && name.ends_with("/Produce"))
        .collect();
    assert!(writes.is_empty(), "the agent traced the ingest's writes: {writes:?}");
}
