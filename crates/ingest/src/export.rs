//! Storing an export: admission against the in-flight byte cap, the
//! records through the producer library with durable acks, the answer only
//! once every accepted item is durable. The gRPC services and the OTLP/HTTP
//! handlers both end here.

use std::{sync::Arc, time::Duration};

use cairn_producer::{ProduceError, Producer};
use cairn_service::{
    ErrorReason, Metrics,
    metrics::prometheus_client::{
        encoding::EncodeLabelSet,
        metrics::{
            counter::Counter,
            family::Family,
            gauge::Gauge,
            histogram::{Histogram, exponential_buckets},
        },
    },
    status,
};
use opentelemetry_proto::tonic::collector::{
    logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse, logs_service_server::LogsService},
    metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse, metrics_service_server::MetricsService},
    trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse, trace_service_server::TraceService},
};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Request, Response, Status};

use crate::{
    config::{OtlpConfig, TopicsConfig},
    otlp::{self, Prepared, Signal},
};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabel {
    signal: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabel {
    signal: &'static str,
    reason: &'static str,
}

/// The receiver's figures.
#[derive(Debug, Clone)]
pub struct ExportMetrics {
    accepted: Family<SignalLabel, Counter>,
    rejected: Family<SignalLabel, Counter>,
    refused: Family<RefusalLabel, Counter>,
    in_flight_bytes: Gauge,
    seconds: Family<SignalLabel, Histogram>,
}

impl ExportMetrics {
    fn new(metrics: &Metrics) -> Self {
        let this = ExportMetrics {
            accepted: Family::default(),
            rejected: Family::default(),
            refused: Family::default(),
            in_flight_bytes: Gauge::default(),
            seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16))),
        };
        metrics.register(
            "cairn_ingest_items_accepted",
            "OTLP items stored durably and acknowledged, by signal",
            this.accepted.clone(),
        );
        metrics.register(
            "cairn_ingest_items_rejected",
            "Malformed OTLP items refused through partial_success, by signal",
            this.rejected.clone(),
        );
        metrics.register(
            "cairn_ingest_items_refused",
            "OTLP items of whole exports refused retryably (overload, storage), by signal and reason",
            this.refused.clone(),
        );
        metrics.register(
            "cairn_ingest_in_flight_bytes",
            "Decoded export bytes held until their items are durable",
            this.in_flight_bytes.clone(),
        );
        metrics.register(
            "cairn_ingest_export_seconds",
            "Time from an export's arrival to its answer, by signal",
            this.seconds.clone(),
        );
        this
    }
}

/// Why an export was not stored.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Past the in-flight byte cap: nothing was written; retry after a pause.
    #[error("ingest is at its in-flight limit ({limit} bytes); retry later")]
    Overloaded { limit: usize, retry_after: Duration },
    /// Larger than a request may be: retrying cannot help.
    #[error("export of {size} bytes exceeds the {limit} byte limit")]
    TooLarge { size: usize, limit: usize },
    /// Some accepted item is not known to be durable: retry the export.
    #[error("not stored: {0}")]
    NotStored(String),
}

impl ExportError {
    /// The gRPC status OTLP exporters act on: UNAVAILABLE with RetryInfo for
    /// anything retryable.
    pub fn status(&self, retry_after: Duration) -> Status {
        match self {
            ExportError::Overloaded { retry_after, .. } => status::with_reason(
                Code::Unavailable,
                self.to_string(),
                ErrorReason::Overloaded,
                Some(*retry_after),
            ),
            ExportError::TooLarge { .. } => Status::resource_exhausted(self.to_string()),
            ExportError::NotStored(_) => status::with_reason(
                Code::Unavailable,
                self.to_string(),
                ErrorReason::DependencyUnavailable,
                Some(retry_after),
            ),
        }
    }
}

/// Stores exports.
#[derive(Clone)]
pub struct Exporter {
    producer: Producer,
    topics: Arc<TopicsConfig>,
    budget: Arc<Semaphore>,
    config: Arc<OtlpConfig>,
    write_timeout: Duration,
    metrics: ExportMetrics,
}

/// The answer to a stored export: what was refused, if anything.
#[derive(Debug, Default)]
pub struct Stored {
    pub partial: Option<(i64, String)>,
}

impl Exporter {
    /// An exporter writing through `producer`.
    pub fn new(
        producer: Producer,
        topics: TopicsConfig,
        config: OtlpConfig,
        write_timeout: Duration,
        metrics: &Metrics,
    ) -> Self {
        Exporter {
            producer,
            topics: Arc::new(topics),
            budget: Arc::new(Semaphore::new(config.max_in_flight_bytes)),
            config: Arc::new(config),
            write_timeout,
            metrics: ExportMetrics::new(metrics),
        }
    }

    /// The receiver's settings.
    pub fn config(&self) -> &OtlpConfig {
        &self.config
    }

    /// The topic of `signal`.
    pub fn topic(&self, signal: Signal) -> &str {
        match signal {
            Signal::Traces => &self.topics.spans,
            Signal::Logs => &self.topics.logs,
            Signal::Metrics => &self.topics.metrics,
        }
    }

    /// Reserves `size` bytes of the in-flight budget, or refuses at once.
    pub fn admit(&self, signal: Signal, size: usize) -> Result<Admitted, ExportError> {
        if size > self.config.max_request_bytes {
            self.refused(signal, "too_large", 1);
            return Err(ExportError::TooLarge {
                size,
                limit: self.config.max_request_bytes,
            });
        }
        let permits = u32::try_from(size.max(1)).unwrap_or(u32::MAX);
        match self.budget.clone().try_acquire_many_owned(permits) {
            Ok(permit) => {
                self.metrics.in_flight_bytes.inc_by(i64::from(permits));
                Ok(Admitted {
                    _permit: permit,
                    gauge: self.metrics.in_flight_bytes.clone(),
                    bytes: i64::from(permits),
                    started: std::time::Instant::now(),
                })
            }
            Err(_) => {
                self.refused(signal, "overloaded", 1);
                Err(ExportError::Overloaded {
                    limit: self.config.max_in_flight_bytes,
                    retry_after: self.config.retry_after,
                })
            }
        }
    }

    fn refused(&self, signal: Signal, reason: &'static str, items: u64) {
        self.metrics
            .refused
            .get_or_create(&RefusalLabel {
                signal: signal.name(),
                reason,
            })
            .inc_by(items);
    }

    /// Writes the prepared records and waits until every one is durable.
    pub async fn store(&self, signal: Signal, prepared: Prepared, admitted: Admitted) -> Result<Stored, ExportError> {
        let label = SignalLabel { signal: signal.name() };
        let count = prepared.records.len() as u64;
        let partial = prepared.partial();
        let rejected = prepared.rejected.max(0) as u64;
        let result = tokio::time::timeout(self.write_timeout, self.write(prepared.records)).await;
        self.metrics
            .seconds
            .get_or_create(&label)
            .observe(admitted.started.elapsed().as_secs_f64());
        drop(admitted);
        match result {
            Ok(Ok(())) => {
                self.metrics.accepted.get_or_create(&label).inc_by(count);
                self.metrics.rejected.get_or_create(&label).inc_by(rejected);
                Ok(Stored { partial })
            }
            Ok(Err(error)) => {
                self.refused(signal, "not_stored", count);
                tracing::warn!(signal = signal.name(), %error, "export not stored");
                Err(ExportError::NotStored(error.to_string()))
            }
            Err(_) => {
                self.refused(signal, "not_stored", count);
                Err(ExportError::NotStored(format!(
                    "not durable within {:?}",
                    self.write_timeout
                )))
            }
        }
    }

    async fn write(&self, records: Vec<cairn_producer::ProducerRecord>) -> Result<(), ProduceError> {
        let mut deliveries = Vec::with_capacity(records.len());
        for record in records {
            deliveries.push(self.producer.send(record).await?);
        }
        for delivery in futures::future::join_all(deliveries).await {
            delivery?;
        }
        Ok(())
    }

    /// Admission, validation and storage of one decoded request: the one
    /// path both transports take.
    pub async fn export<R: Message>(
        &self,
        signal: Signal,
        request: R,
        prepare: fn(R, &str) -> Prepared,
    ) -> Result<Stored, ExportError> {
        let admitted = self.admit(signal, request.encoded_len())?;
        let prepared = prepare(request, self.topic(signal));
        self.store(signal, prepared, admitted).await
    }
}

/// Bytes of the in-flight budget an export holds until it is answered.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    gauge: Gauge,
    bytes: i64,
    started: std::time::Instant,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gauge.dec_by(self.bytes);
    }
}

/// The OTLP/gRPC services over an [`Exporter`].
#[derive(Clone)]
pub struct Otlp(pub Exporter);

impl Otlp {
    async fn run<R: Message>(
        &self,
        signal: Signal,
        request: Request<R>,
        prepare: fn(R, &str) -> Prepared,
    ) -> Result<Option<(i64, String)>, Status> {
        self.0
            .export(signal, request.into_inner(), prepare)
            .await
            .map(|stored| stored.partial)
            .map_err(|e| e.status(self.0.config.retry_after))
    }
}

#[tonic::async_trait]
impl TraceService for Otlp {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let partial = self.run(Signal::Traces, request, otlp::traces).await?;
        Ok(Response::new(otlp::trace_response(partial)))
    }
}

#[tonic::async_trait]
impl LogsService for Otlp {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let partial = self.run(Signal::Logs, request, otlp::logs).await?;
        Ok(Response::new(otlp::logs_response(partial)))
    }
}

#[tonic::async_trait]
impl MetricsService for Otlp {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        let partial = self.run(Signal::Metrics, request, otlp::metrics).await?;
        Ok(Response::new(otlp::metrics_response(partial)))
    }
}
