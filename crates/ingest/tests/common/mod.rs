//! What the ingest tests share: spans to send, an OTLP client, and a
//! Junjo-style ReadSpans poller.

#![allow(clippy::unwrap_used, dead_code)]

use std::{collections::HashSet, time::Duration};

use cairn_proto::ingestion::{
    ReadSpansRequest, ReadSpansResponse, internal_ingestion_service_client::InternalIngestionServiceClient,
};
pub use cairn_testkit::cluster::*;
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse, trace_service_client::TraceServiceClient,
    },
    common::v1::{AnyValue, KeyValue, any_value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prost::Message;
use tonic::{Status, transport::Channel};

/// A valid span; `n` makes its trace and span ids unique.
pub fn span(n: u64) -> Span {
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&(n + 1).to_be_bytes());
    trace_id[8..].copy_from_slice(&0xC0FFEE_u64.to_be_bytes());
    Span {
        trace_id: trace_id.to_vec(),
        span_id: (n + 1).to_be_bytes().to_vec(),
        name: format!("op-{n}"),
        start_time_unix_nano: 1_700_000_000_000_000_000 + n,
        end_time_unix_nano: 1_700_000_000_000_000_000 + n + 1_000,
        ..Default::default()
    }
}

/// One request holding `spans` of service `service`.
pub fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(service.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    }
}

pub async fn otlp(addr: &str) -> TraceServiceClient<Channel> {
    TraceServiceClient::new(channel(addr).await)
}

/// Exports spans `from..to` in requests of `per` spans.
pub async fn export(addr: &str, from: u64, to: u64, per: u64) {
    let mut client = otlp(addr).await;
    let mut n = from;
    while n < to {
        let end = (n + per).min(to);
        let response: ExportTraceServiceResponse = client
            .export(request("svc", (n..end).map(span).collect()))
            .await
            .unwrap()
            .into_inner();
        assert!(response.partial_success.is_none(), "{response:?}");
        n = end;
    }
}

pub async fn spans_client(addr: &str) -> InternalIngestionServiceClient<Channel> {
    InternalIngestionServiceClient::new(channel(addr).await)
}

/// One ReadSpans page.
pub async fn page(addr: &str, start: &[u8], batch: u32) -> Result<Vec<ReadSpansResponse>, Status> {
    let mut client = spans_client(addr).await;
    let mut stream = client
        .read_spans(ReadSpansRequest {
            start_key_ulid: start.to_vec(),
            batch_size: batch,
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.push(m);
    }
    Ok(out)
}

/// What a Junjo-style poller has read: span names in order, and the key to
/// continue from.
#[derive(Debug, Default)]
pub struct Poller {
    pub key: Vec<u8>,
    pub names: Vec<String>,
    pub keys: Vec<Vec<u8>>,
}

impl Poller {
    /// Pages with `batch` until a page brings no span or `max_pages` pages.
    pub async fn poll(&mut self, addr: &str, batch: u32, max_pages: usize) -> usize {
        let mut pages = 0;
        while pages < max_pages {
            let messages = page(addr, &self.key, batch).await.unwrap();
            pages += 1;
            let mut spans = 0;
            for m in &messages {
                assert!(!m.key_ulid.is_empty());
                if m.span_bytes.is_empty() || m.resource_bytes.is_empty() {
                    // junjo-ai-studio's key-only final message.
                    assert!(m.key_ulid > self.key, "a key-only message never moves back");
                    self.key = m.key_ulid.clone();
                    continue;
                }
                let span = Span::decode(&m.span_bytes[..]).unwrap();
                let resource = Resource::decode(&m.resource_bytes[..]).unwrap();
                assert!(!resource.attributes.is_empty(), "every span has a resource");
                self.names.push(span.name);
                self.keys.push(m.key_ulid.clone());
                self.key = m.key_ulid.clone();
                spans += 1;
            }
            if spans == 0 {
                break;
            }
        }
        pages
    }

    /// Polls until `want` spans were read or `timeout` passes.
    pub async fn poll_until(&mut self, addr: &str, batch: u32, want: usize, timeout: Duration) {
        let give_up = tokio::time::Instant::now() + timeout;
        while self.names.len() < want && tokio::time::Instant::now() < give_up {
            self.poll(addr, batch, 1000).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every span `0..n` exactly once, keys strictly increasing.
    pub fn assert_exactly(&self, n: u64) {
        assert!(self.keys.windows(2).all(|w| w[0] < w[1]), "keys strictly increase");
        let unique: HashSet<&String> = self.names.iter().collect();
        assert_eq!(unique.len(), self.names.len(), "no span twice");
        let expected: HashSet<String> = (0..n).map(|i| format!("op-{i}")).collect();
        let got: HashSet<String> = self.names.iter().cloned().collect();
        let missing: Vec<&String> = expected.difference(&got).take(5).collect();
        assert!(
            missing.is_empty(),
            "missing {} spans, e.g. {missing:?}",
            expected.len() - got.len()
        );
        assert_eq!(self.names.len() as u64, n);
    }
}
