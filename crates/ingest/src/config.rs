//! Configuration of `cairn-ingest`.

use std::{net::SocketAddr, time::Duration};

use cairn_service::{
    ClientConfig, ConfigError, MetricsConfig, ServerConfig, ServiceConfig, TelemetryConfig, auth::AuthClientConfig,
};
use serde::{Deserialize, Serialize};

/// Everything `cairn-ingest` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The main listener: ReadSpans and ReadRecords.
    pub grpc: ServerConfig,
    pub telemetry: TelemetryConfig,
    pub metrics: MetricsConfig,
    /// How callers' API keys are checked.
    pub auth: AuthClientConfig,
    pub otlp: OtlpConfig,
    pub ingest: IngestConfig,
    /// The object store the agents write segments to (read-only here).
    pub object_store: ObjectStoreConfig,
    pub reader: ReaderConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc: ServerConfig::on_port(50053),
            telemetry: TelemetryConfig::default(),
            metrics: MetricsConfig::beside(50053),
            auth: AuthClientConfig::default(),
            otlp: OtlpConfig::default(),
            ingest: IngestConfig::default(),
            object_store: ObjectStoreConfig::default(),
            reader: ReaderConfig::default(),
        }
    }
}

/// The OTLP receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpConfig {
    /// OTLP/gRPC (`TraceService`, `LogsService`, `MetricsService`).
    pub listen: SocketAddr,
    /// OTLP/HTTP (`POST /v1/traces|logs|metrics`); empty turns it off.
    pub http_listen: String,
    /// Largest export request, decompressed. Larger ones are refused
    /// (gRPC `RESOURCE_EXHAUSTED` without retry info, HTTP 413): retrying
    /// cannot help. (gRPC requests over twice this are refused by the
    /// decoder itself, with `OUT_OF_RANGE`.)
    #[serde(with = "cairn_service::units::bytes_usize")]
    pub max_request_bytes: usize,
    /// Decoded export bytes held at once across all requests until their
    /// items are durable; past it requests are refused retryably
    /// (`UNAVAILABLE` with retry info, HTTP 503 with `Retry-After`).
    #[serde(with = "cairn_service::units::bytes_usize")]
    pub max_in_flight_bytes: usize,
    /// The pause a refused exporter is told to take.
    #[serde(with = "cairn_service::units::duration")]
    pub retry_after: Duration,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 4317)),
            http_listen: "127.0.0.1:4318".into(),
            max_request_bytes: 4 * 1024 * 1024,
            max_in_flight_bytes: 64 * 1024 * 1024,
            retry_after: Duration::from_secs(1),
        }
    }
}

impl OtlpConfig {
    /// The OTLP/HTTP address, if on.
    pub fn http_address(&self) -> Option<SocketAddr> {
        self.http_listen.parse().ok()
    }
}

/// Where received telemetry goes, and the private listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Agents to bootstrap from.
    pub agents: Vec<String>,
    /// The key ingest writes, reads and creates its topics with (scopes
    /// `topics:produce`, `topics:consume` and `topics:admin` on them);
    /// `CAIRN_API_KEY` when empty.
    pub api_key: String,
    /// The channel to the agents.
    pub client: ClientConfig,
    pub topics: TopicsConfig,
    /// A listener serving ReadSpans without any key, for a private network
    /// (as junjo-server's internal port does, so an unchanged Junjo backend,
    /// which sends no key, can poll). A trust boundary: whoever reaches it
    /// reads every span. Empty turns it off.
    pub internal_listen: String,
    /// How long an export waits for its items to become durable before it
    /// is answered `UNAVAILABLE` (the exporter retries).
    #[serde(with = "cairn_service::units::duration")]
    pub write_timeout: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            agents: vec!["127.0.0.1:50052".into()],
            api_key: String::new(),
            client: ClientConfig::default(),
            topics: TopicsConfig::default(),
            internal_listen: String::new(),
            write_timeout: Duration::from_secs(10),
        }
    }
}

impl IngestConfig {
    /// The internal listener's address, if on.
    pub fn internal_address(&self) -> Option<SocketAddr> {
        self.internal_listen.parse().ok()
    }

    /// The key to use with the agents.
    pub fn key(&self) -> String {
        if self.api_key.is_empty() {
            std::env::var("CAIRN_API_KEY").unwrap_or_default()
        } else {
            self.api_key.clone()
        }
    }
}

/// The topic of each signal, created on start-up when absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicsConfig {
    pub spans: String,
    pub logs: String,
    pub metrics: String,
    /// Partitions of a topic ingest creates.
    pub partitions: u32,
    /// Retention of a topic ingest creates.
    #[serde(with = "cairn_service::units::duration")]
    pub retention: Duration,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            spans: "otel.spans".into(),
            logs: "otel.logs".into(),
            metrics: "otel.metrics".into(),
            partitions: 4,
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The segments' object store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// The agents' `object_store.url`: `file:///path` or `s3://bucket/prefix`.
    pub url: String,
    pub s3: cairn_object_store::S3Config,
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        ObjectStoreConfig {
            url: "file://cairn-objects".into(),
            s3: cairn_object_store::S3Config::default(),
        }
    }
}

/// The log reader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReaderConfig {
    /// Memory for decoded segment blocks (what their records hold on the heap).
    #[serde(with = "cairn_service::units::bytes_usize")]
    pub block_cache: usize,
    /// Segments whose block index is kept in memory.
    pub index_cache: usize,
    /// Most bytes one read asks a leader or a segment for.
    #[serde(with = "cairn_service::units::bytes_usize")]
    pub fetch_bytes: usize,
    /// How long a following reader's long-poll of a leader waits.
    #[serde(with = "cairn_service::units::duration")]
    pub follow_wait: Duration,
}

impl Default for ReaderConfig {
    fn default() -> Self {
        ReaderConfig {
            block_cache: 256 * 1024 * 1024,
            index_cache: 4096,
            fetch_bytes: 1024 * 1024,
            follow_wait: Duration::from_secs(1),
        }
    }
}

impl ServiceConfig for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        self.auth.validate("auth")?;
        self.ingest.client.validate("ingest.client")?;
        if !self.otlp.http_listen.is_empty() && self.otlp.http_address().is_none() {
            return Err(ConfigError::invalid(
                "otlp.http_listen",
                "must be host:port (an IP address), or empty to turn OTLP/HTTP off",
            ));
        }
        if !self.ingest.internal_listen.is_empty() && self.ingest.internal_address().is_none() {
            return Err(ConfigError::invalid(
                "ingest.internal_listen",
                "must be host:port (an IP address), or empty to turn it off",
            ));
        }
        if self.otlp.max_request_bytes < 1024 || self.otlp.max_request_bytes > 256 * 1024 * 1024 {
            return Err(ConfigError::invalid(
                "otlp.max_request_bytes",
                "must be between 1 KiB and 256 MiB",
            ));
        }
        if self.otlp.max_in_flight_bytes < self.otlp.max_request_bytes {
            return Err(ConfigError::invalid(
                "otlp.max_in_flight_bytes",
                "must be at least otlp.max_request_bytes",
            ));
        }
        if self.ingest.agents.is_empty() {
            return Err(ConfigError::invalid("ingest.agents", "name at least one agent"));
        }
        let t = &self.ingest.topics;
        for (field, name) in [("spans", &t.spans), ("logs", &t.logs), ("metrics", &t.metrics)] {
            if !cairn_client::names::valid_topic_name(name) {
                return Err(ConfigError::invalid(
                    format!("ingest.topics.{field}"),
                    cairn_client::names::TOPIC_NAME_RULE,
                ));
            }
        }
        if t.partitions == 0 {
            return Err(ConfigError::invalid("ingest.topics.partitions", "must be at least 1"));
        }
        if self.reader.fetch_bytes < 1024 {
            return Err(ConfigError::invalid("reader.fetch_bytes", "must be at least 1 KiB"));
        }
        Ok(())
    }

    fn listeners(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut out = vec![("otlp", self.otlp.listen)];
        if let Some(http) = self.otlp.http_address() {
            out.push(("otlp_http", http));
        }
        if let Some(internal) = self.ingest.internal_address() {
            out.push(("internal", internal));
        }
        out
    }

    cairn_service::standard_sections!();
}
