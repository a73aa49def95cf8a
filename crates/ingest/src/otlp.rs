//! One decoding and validation path for OTLP exports, whatever the
//! transport: a request becomes one record per span, log record or data
//! point (the `TelemetryRecord` container of `cairn.ingest.v1`), and the
//! malformed items are counted out with the first reason, for
//! `partial_success`.

use cairn_producer::ProducerRecord;
use cairn_proto::cairn::ingest::v1::{TelemetryRecord, telemetry_record::Item};
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse},
        metrics::v1::{ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse},
        trace::v1::{ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse},
    },
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    logs::v1::LogRecord,
    metrics::v1::{Metric, metric::Data},
    resource::v1::Resource,
    trace::v1::Span,
};
use prost::Message;

/// The three OTLP signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    Traces,
    Logs,
    Metrics,
}

impl Signal {
    /// Every signal, for metrics labels and loops.
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Logs, Signal::Metrics];

    /// The label in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }

    /// The scope an exporter's key needs (`spans:write`, …).
    pub fn scope(self) -> cairn_service::scope::Scope {
        cairn_service::scope::Scope::required(self.name(), "write", None).unwrap_or_else(|e| unreachable!("{e}"))
    }
}

/// An export's items as records, and what was refused.
#[derive(Debug, Default)]
pub struct Prepared {
    pub records: Vec<ProducerRecord>,
    /// Malformed items, not stored.
    pub rejected: i64,
    /// Why the first of them was refused.
    pub error: Option<String>,
}

impl Prepared {
    fn reject(&mut self, why: String) {
        self.rejected += 1;
        if self.error.is_none() {
            self.error = Some(why);
        }
    }

    /// The `partial_success` to answer with: none when nothing was refused.
    pub fn partial(&self) -> Option<(i64, String)> {
        (self.rejected > 0).then(|| {
            let first = self.error.clone().unwrap_or_default();
            (
                self.rejected,
                format!("{} item(s) rejected; the first: {first}", self.rejected),
            )
        })
    }
}

/// The resource stored with every item: the exporter's, or one naming
/// `service.name = "unknown_service"` when it sent none (readers need a
/// non-empty resource beside every span).
fn resource_bytes(resource: Option<Resource>) -> Vec<u8> {
    let resource = resource.unwrap_or_default();
    let bytes = resource.encode_to_vec();
    if !bytes.is_empty() {
        return bytes;
    }
    Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue("unknown_service".into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
    .encode_to_vec()
}

fn scope_bytes(scope: Option<InstrumentationScope>) -> Vec<u8> {
    scope.map(|s| s.encode_to_vec()).unwrap_or_default()
}

/// Where an item came from, encoded once per resource and scope.
struct Origin {
    resource: Vec<u8>,
    resource_schema_url: String,
    scope: Vec<u8>,
    scope_schema_url: String,
}

impl Origin {
    fn record(&self, item: Item) -> Vec<u8> {
        TelemetryRecord {
            item: Some(item),
            resource: self.resource.clone(),
            resource_schema_url: self.resource_schema_url.clone(),
            scope: self.scope.clone(),
            scope_schema_url: self.scope_schema_url.clone(),
        }
        .encode_to_vec()
    }
}

fn valid_id(id: &[u8], len: usize) -> bool {
    id.len() == len && id.iter().any(|&b| b != 0)
}

/// Why a span is malformed, if it is.
pub fn check_span(span: &Span) -> Result<(), String> {
    if !valid_id(&span.trace_id, 16) {
        return Err(format!(
            "span {:?}: trace_id must be 16 bytes, not all zero (got {} bytes)",
            span.name,
            span.trace_id.len()
        ));
    }
    if !valid_id(&span.span_id, 8) {
        return Err(format!(
            "span {:?}: span_id must be 8 bytes, not all zero (got {} bytes)",
            span.name,
            span.span_id.len()
        ));
    }
    if !span.parent_span_id.is_empty() && span.parent_span_id.len() != 8 {
        return Err(format!("span {:?}: parent_span_id must be empty or 8 bytes", span.name));
    }
    if span.name.is_empty() {
        return Err("a span must have a name".into());
    }
    if span.end_time_unix_nano != 0 && span.end_time_unix_nano < span.start_time_unix_nano {
        return Err(format!("span {:?}: ends before it starts", span.name));
    }
    Ok(())
}

/// Why a log record is malformed, if it is.
pub fn check_log(log: &LogRecord) -> Result<(), String> {
    if !log.trace_id.is_empty() && !valid_id(&log.trace_id, 16) {
        return Err("log record: trace_id must be empty or 16 bytes, not all zero".into());
    }
    if !log.span_id.is_empty() && !valid_id(&log.span_id, 8) {
        return Err("log record: span_id must be empty or 8 bytes, not all zero".into());
    }
    Ok(())
}

/// Spans, keyed by trace id so a trace stays in one partition.
pub fn traces(request: ExportTraceServiceRequest, topic: &str) -> Prepared {
    let mut out = Prepared::default();
    for rs in request.resource_spans {
        let resource = resource_bytes(rs.resource);
        for ss in rs.scope_spans {
            let origin = Origin {
                resource: resource.clone(),
                resource_schema_url: rs.schema_url.clone(),
                scope: scope_bytes(ss.scope),
                scope_schema_url: ss.schema_url,
            };
            for span in ss.spans {
                if let Err(why) = check_span(&span) {
                    out.reject(why);
                    continue;
                }
                let key = span.trace_id.clone();
                let value = origin.record(Item::Span(span.encode_to_vec()));
                out.records.push(ProducerRecord::new(topic, value).key(key));
            }
        }
    }
    out
}

/// Log records, keyed by trace id when they carry one.
pub fn logs(request: ExportLogsServiceRequest, topic: &str) -> Prepared {
    let mut out = Prepared::default();
    for rl in request.resource_logs {
        let resource = resource_bytes(rl.resource);
        for sl in rl.scope_logs {
            let origin = Origin {
                resource: resource.clone(),
                resource_schema_url: rl.schema_url.clone(),
                scope: scope_bytes(sl.scope),
                scope_schema_url: sl.schema_url,
            };
            for log in sl.log_records {
                if let Err(why) = check_log(&log) {
                    out.reject(why);
                    continue;
                }
                let key = (!log.trace_id.is_empty()).then(|| log.trace_id.clone());
                let mut record = ProducerRecord::new(topic, origin.record(Item::LogRecord(log.encode_to_vec())));
                if let Some(key) = key {
                    record = record.key(key);
                }
                out.records.push(record);
            }
        }
    }
    out
}

/// A metric holding only `data`, its other fields as sent.
fn with_data(metric: &Metric, data: Data) -> Metric {
    Metric {
        name: metric.name.clone(),
        description: metric.description.clone(),
        unit: metric.unit.clone(),
        metadata: metric.metadata.clone(),
        data: Some(data),
    }
}

/// The metric split into one metric per data point, or why it is malformed
/// (then every point it has counts as rejected).
fn split_metric(metric: &Metric) -> Result<Vec<Metric>, (usize, String)> {
    let points = |n: usize| n.max(1);
    let Some(data) = &metric.data else {
        return Err((1, format!("metric {:?} has no data", metric.name)));
    };
    let count = match data {
        Data::Gauge(g) => g.data_points.len(),
        Data::Sum(s) => s.data_points.len(),
        Data::Histogram(h) => h.data_points.len(),
        Data::ExponentialHistogram(h) => h.data_points.len(),
        Data::Summary(s) => s.data_points.len(),
    };
    if metric.name.is_empty() {
        return Err((points(count), "a metric must have a name".into()));
    }
    if let Data::Histogram(h) = data
        && let Some(bad) = h
            .data_points
            .iter()
            .find(|p| !p.bucket_counts.is_empty() && p.bucket_counts.len() != p.explicit_bounds.len() + 1)
    {
        return Err((
            points(count),
            format!(
                "metric {:?}: a histogram point has {} bucket counts for {} bounds (must be bounds + 1)",
                metric.name,
                bad.bucket_counts.len(),
                bad.explicit_bounds.len()
            ),
        ));
    }
    let out = match data {
        Data::Gauge(g) => g
            .data_points
            .iter()
            .map(|p| {
                let mut one = g.clone();
                one.data_points = vec![p.clone()];
                with_data(metric, Data::Gauge(one))
            })
            .collect(),
        Data::Sum(s) => s
            .data_points
            .iter()
            .map(|p| {
                let mut one = s.clone();
                one.data_points = vec![p.clone()];
                with_data(metric, Data::Sum(one))
            })
            .collect(),
        Data::Histogram(h) => h
            .data_points
            .iter()
            .map(|p| {
                let mut one = h.clone();
                one.data_points = vec![p.clone()];
                with_data(metric, Data::Histogram(one))
            })
            .collect(),
        Data::ExponentialHistogram(h) => h
            .data_points
            .iter()
            .map(|p| {
                let mut one = h.clone();
                one.data_points = vec![p.clone()];
                with_data(metric, Data::ExponentialHistogram(one))
            })
            .collect(),
        Data::Summary(s) => s
            .data_points
            .iter()
            .map(|p| {
                let mut one = s.clone();
                one.data_points = vec![p.clone()];
                with_data(metric, Data::Summary(one))
            })
            .collect(),
    };
    Ok(out)
}

/// Data points, one record each, keyless.
pub fn metrics(request: ExportMetricsServiceRequest, topic: &str) -> Prepared {
    let mut out = Prepared::default();
    for rm in request.resource_metrics {
        let resource = resource_bytes(rm.resource);
        for sm in rm.scope_metrics {
            let origin = Origin {
                resource: resource.clone(),
                resource_schema_url: rm.schema_url.clone(),
                scope: scope_bytes(sm.scope),
                scope_schema_url: sm.schema_url,
            };
            for metric in &sm.metrics {
                match split_metric(metric) {
                    Ok(points) => out.records.extend(
                        points
                            .into_iter()
                            .map(|m| ProducerRecord::new(topic, origin.record(Item::Metric(m.encode_to_vec())))),
                    ),
                    Err((n, why)) => {
                        for _ in 0..n {
                            out.reject(why.clone());
                        }
                    }
                }
            }
        }
    }
    out
}

/// The answer to a trace export: `partial_success` only when something was refused.
pub fn trace_response(partial: Option<(i64, String)>) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: partial.map(|(rejected_spans, error_message)| ExportTracePartialSuccess {
            rejected_spans,
            error_message,
        }),
    }
}

/// The answer to a logs export.
pub fn logs_response(partial: Option<(i64, String)>) -> ExportLogsServiceResponse {
    ExportLogsServiceResponse {
        partial_success: partial.map(|(rejected_log_records, error_message)| ExportLogsPartialSuccess {
            rejected_log_records,
            error_message,
        }),
    }
}

/// The answer to a metrics export.
pub fn metrics_response(partial: Option<(i64, String)>) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: partial.map(|(rejected_data_points, error_message)| ExportMetricsPartialSuccess {
            rejected_data_points,
            error_message,
        }),
    }
}

/// The OTLP item a telemetry record holds, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    Span(Span),
    LogRecord(LogRecord),
    Metric(Metric),
}

/// Decodes the item inside a telemetry record; `Ok(None)` when the record
/// holds none (a writer newer than this reader, or a corrupt value).
pub fn decode_item(record: &TelemetryRecord) -> Result<Option<Decoded>, prost::DecodeError> {
    Ok(Some(match &record.item {
        Some(Item::Span(bytes)) => Decoded::Span(Span::decode(&bytes[..])?),
        Some(Item::LogRecord(bytes)) => Decoded::LogRecord(LogRecord::decode(&bytes[..])?),
        Some(Item::Metric(bytes)) => Decoded::Metric(Metric::decode(&bytes[..])?),
        None => return Ok(None),
    }))
}

/// Decodes a record's value written by [`traces`], [`logs`] or [`metrics`].
pub fn decode_record(value: &[u8]) -> Result<TelemetryRecord, prost::DecodeError> {
    TelemetryRecord::decode(value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use opentelemetry_proto::tonic::{
        metrics::v1::{Gauge, Histogram, HistogramDataPoint, NumberDataPoint, ResourceMetrics, ScopeMetrics},
        trace::v1::{ResourceSpans, ScopeSpans},
    };

    use super::*;

    fn span(name: &str, trace: u8) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![1; 8],
            name: name.into(),
            start_time_unix_nano: 10,
            end_time_unix_nano: 20,
            ..Default::default()
        }
    }

    fn request(resource: Option<Resource>, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource,
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "lib".into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: "https://schema".into(),
            }],
        }
    }

    #[test]
    fn good_spans_become_records_keyed_by_trace_and_malformed_ones_are_counted_out() {
        let mut zero_trace = span("z", 0);
        zero_trace.trace_id = vec![0; 16];
        let mut short_span_id = span("s", 2);
        short_span_id.span_id = vec![1; 4];
        let nameless = span("", 3);
        let mut backwards = span("b", 4);
        backwards.end_time_unix_nano = 5;
        let prepared = traces(
            request(
                None,
                vec![
                    span("a", 7),
                    zero_trace,
                    short_span_id,
                    nameless,
                    backwards,
                    span("c", 8),
                ],
            ),
            "otel.spans",
        );
        assert_eq!(prepared.records.len(), 2);
        assert_eq!(prepared.rejected, 4);
        let (n, message) = prepared.partial().unwrap();
        assert_eq!(n, 4);
        assert!(message.contains("trace_id"), "{message}");
        let first = &prepared.records[0];
        assert_eq!(first.key.as_deref(), Some(&[7u8; 16][..]));
        let record = decode_record(&first.value).unwrap();
        let Some(Decoded::Span(span)) = decode_item(&record).unwrap() else {
            panic!("a span record")
        };
        assert_eq!(span.name, "a");
        let resource = Resource::decode(&record.resource[..]).unwrap();
        assert_eq!(
            resource.attributes[0].key, "service.name",
            "a missing resource is named"
        );
        assert_eq!(record.resource_schema_url, "https://schema");
        assert_eq!(InstrumentationScope::decode(&record.scope[..]).unwrap().name, "lib");
    }

    #[test]
    fn nothing_rejected_means_no_partial_success_and_an_empty_request_is_fine() {
        let prepared = traces(request(None, vec![span("a", 1)]), "t");
        assert_eq!(prepared.partial(), None);
        let empty = traces(ExportTraceServiceRequest::default(), "t");
        assert!(empty.records.is_empty() && empty.partial().is_none());
    }

    #[test]
    fn metrics_split_into_one_record_per_data_point() {
        let gauge = Metric {
            name: "temp".into(),
            unit: "C".into(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint::default(), NumberDataPoint::default()],
            })),
            ..Default::default()
        };
        let bad_histogram = Metric {
            name: "latency".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    bucket_counts: vec![1, 2],
                    explicit_bounds: vec![1.0, 2.0],
                    ..Default::default()
                }],
                aggregation_temporality: 1,
            })),
            ..Default::default()
        };
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![gauge, bad_histogram, Metric::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let prepared = metrics(request, "m");
        assert_eq!(prepared.records.len(), 2);
        assert_eq!(prepared.rejected, 2);
        assert!(prepared.records.iter().all(|r| r.key.is_none()));
        let record = decode_record(&prepared.records[1].value).unwrap();
        let Some(Item::Metric(bytes)) = record.item else {
            panic!("a metric record")
        };
        let metric = Metric::decode(&bytes[..]).unwrap();
        assert_eq!((metric.name.as_str(), metric.unit.as_str()), ("temp", "C"));
        let Some(Data::Gauge(g)) = metric.data else { panic!() };
        assert_eq!(g.data_points.len(), 1);
    }

    #[test]
    fn logs_with_bad_ids_are_rejected_and_keyed_by_trace_when_they_have_one() {
        use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
        let good = LogRecord {
            trace_id: vec![5; 16],
            ..Default::default()
        };
        let keyless = LogRecord::default();
        let bad = LogRecord {
            span_id: vec![0; 8],
            ..Default::default()
        };
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs {
                    log_records: vec![good, keyless, bad],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let prepared = logs(request, "l");
        assert_eq!(prepared.records.len(), 2);
        assert_eq!(prepared.rejected, 1);
        assert_eq!(prepared.records[0].key.as_deref(), Some(&[5u8; 16][..]));
        assert!(prepared.records[1].key.is_none());
    }
}
