//! One metrics registry per process, shared by every part of it (the
//! service, the client libraries it embeds), exposed in Prometheus text
//! format by the service's metrics listener. Built on `prometheus-client`:
//! an explicit registry (no global state, so tests and embedded libraries
//! don't collide), OpenMetrics encoding, and collectors that read existing
//! atomics at scrape time instead of adding work to hot paths. It serves no
//! HTTP itself; the service runtime does, on the hyper already in the tree.

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::Instant,
};

use prometheus_client::{
    collector::Collector,
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Metric, Registry},
};
use tonic::Code;

pub use prometheus_client;

/// The process's metrics registry (cheap to clone).
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    registry: Mutex<Registry>,
    client: OnceLock<RpcMetrics>,
    server: OnceLock<RpcMetrics>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Metrics::default()
    }

    /// Registers `metric` as `name` (no `_total` suffix for counters: it is added).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register(name, help, metric);
    }

    /// Registers a collector, asked for its figures on every scrape.
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(collector);
    }

    /// Everything registered, in the Prometheus/OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.inner.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(%error, "encoding metrics failed");
        }
        out
    }

    /// Outgoing RPCs by service, method and code (registered on first use).
    pub fn rpc_client(&self) -> &RpcMetrics {
        self.inner
            .client
            .get_or_init(|| RpcMetrics::register(self, "cairn_rpc_client", "outgoing"))
    }

    /// Incoming RPCs by service, method and code (registered on first use).
    pub fn rpc_server(&self) -> &RpcMetrics {
        self.inner
            .server
            .get_or_init(|| RpcMetrics::register(self, "cairn_rpc_server", "incoming"))
    }
}

/// Labels of a finished call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub service: Arc<str>,
    pub method: Arc<str>,
    pub code: &'static str,
}

/// Labels of a method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub service: Arc<str>,
    pub method: Arc<str>,
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~100 s.
    Histogram::new(exponential_buckets(0.0001, 2.5, 16))
}

/// Requests, latency and in-flight calls of one side (client or server).
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    requests: Family<CallLabels, Counter>,
    latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<MethodLabels, Gauge>,
}

impl RpcMetrics {
    fn register(metrics: &Metrics, prefix: &str, side: &str) -> Self {
        let this = RpcMetrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            in_flight: Family::default(),
        };
        metrics.register(
            &format!("{prefix}_requests"),
            &format!("Finished {side} RPCs by service, method and gRPC code"),
            this.requests.clone(),
        );
        metrics.register(
            &format!("{prefix}_duration_seconds"),
            &format!("Time from the start of an {side} RPC until its last message (streams included)"),
            this.latency.clone(),
        );
        metrics.register(
            &format!("{prefix}_in_flight"),
            &format!("{side} RPCs started and not yet finished"),
            this.in_flight.clone(),
        );
        this
    }

    /// Counts a call to `path` (`/package.Service/Method`) as started.
    pub fn start(&self, path: &str) -> RpcCall {
        let (service, method) = split_path(path);
        let labels = MethodLabels {
            service: service.into(),
            method: method.into(),
        };
        self.in_flight.get_or_create(&labels).inc();
        RpcCall {
            metrics: self.clone(),
            labels,
            started: Instant::now(),
            done: false,
        }
    }

    /// How many calls of `path` finished with `code` so far.
    pub fn count(&self, path: &str, code: Code) -> u64 {
        let (service, method) = split_path(path);
        self.requests
            .get_or_create(&CallLabels {
                service: service.into(),
                method: method.into(),
                code: code_name(code),
            })
            .get()
    }
}

/// One call being measured; dropping it without [`RpcCall::finish`] counts it CANCELLED.
#[derive(Debug)]
pub struct RpcCall {
    metrics: RpcMetrics,
    labels: MethodLabels,
    started: Instant,
    done: bool,
}

impl RpcCall {
    /// Records the call's end with `code`.
    pub fn finish(mut self, code: Code) {
        self.record(code);
    }

    fn record(&mut self, code: Code) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let m = &self.metrics;
        m.in_flight.get_or_create(&self.labels).dec();
        m.latency
            .get_or_create(&self.labels)
            .observe(self.started.elapsed().as_secs_f64());
        m.requests
            .get_or_create(&CallLabels {
                service: self.labels.service.clone(),
                method: self.labels.method.clone(),
                code: code_name(code),
            })
            .inc();
    }
}

impl Drop for RpcCall {
    fn drop(&mut self) {
        self.record(Code::Cancelled);
    }
}

/// `("pkg.Service", "Method")` from `/pkg.Service/Method`.
pub fn split_path(path: &str) -> (&str, &str) {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    trimmed.split_once('/').unwrap_or((trimmed, ""))
}

/// The canonical name of a gRPC code, as label values use it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_counted_by_code_and_timed() {
        let metrics = Metrics::new();
        let rpc = metrics.rpc_server();
        rpc.start("/cairn.agent.v1.AgentService/Produce").finish(Code::Ok);
        rpc.start("/cairn.agent.v1.AgentService/Produce")
            .finish(Code::Unavailable);
        drop(rpc.start("/cairn.agent.v1.AgentService/Produce"));
        assert_eq!(rpc.count("/cairn.agent.v1.AgentService/Produce", Code::Ok), 1);
        assert_eq!(rpc.count("/cairn.agent.v1.AgentService/Produce", Code::Cancelled), 1);
        let text = metrics.encode();
        assert!(
            text.contains(r#"cairn_rpc_server_requests_total{service="cairn.agent.v1.AgentService",method="Produce",code="UNAVAILABLE"} 1"#),
            "{text}"
        );
        assert!(text.contains("cairn_rpc_server_duration_seconds_count"), "{text}");
        assert!(
            text.contains(r#"cairn_rpc_server_in_flight{service="cairn.agent.v1.AgentService",method="Produce"} 0"#),
            "{text}"
        );
        assert_eq!(split_path("/a.B/C"), ("a.B", "C"));
    }
}
