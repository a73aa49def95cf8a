//! Configuration of `cairn-agent`.

use std::path::PathBuf;
use std::time::Duration;

use cairn_service::{
    Backoff, ConfigError, MetricsConfig, ServerConfig, ServiceConfig, TelemetryConfig, auth::AuthClientConfig,
};
use serde::{Deserialize, Serialize};

/// Everything `cairn-agent` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub grpc: ServerConfig,
    pub telemetry: TelemetryConfig,
    pub metrics: MetricsConfig,
    /// How callers' API keys are checked.
    pub auth: AuthClientConfig,
    pub agent: AgentConfig,
    pub metadata: MetadataConfig,
    pub object_store: ObjectStoreConfig,
    pub limits: Limits,
}

/// Where segments go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// `file:///path` (a local directory; every agent of a cluster must see
    /// the same one) or `s3://bucket/prefix`.
    pub url: String,
    /// Used for `s3://` URLs.
    pub s3: cairn_object_store::S3Config,
    /// How failed uploads are retried (exponential, full jitter).
    pub upload_backoff: Backoff,
}

impl Default for ObjectStoreConfig {
    fn default() -> Self {
        ObjectStoreConfig {
            url: "file://cairn-objects".into(),
            s3: cairn_object_store::S3Config::default(),
            upload_backoff: Backoff::new(Duration::from_millis(200), Duration::from_secs(10)),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc: ServerConfig::on_port(50052),
            telemetry: TelemetryConfig::default(),
            metrics: MetricsConfig::beside(50052),
            auth: AuthClientConfig::default(),
            agent: AgentConfig::default(),
            metadata: MetadataConfig::default(),
            object_store: ObjectStoreConfig::default(),
            limits: Limits::default(),
        }
    }
}

/// This agent's identity, storage and leases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Stable id; empty means the one kept in `data_dir/agent-id` (created on first start).
    pub id: String,
    /// Where the WAL lives.
    pub data_dir: PathBuf,
    /// Address other agents and clients reach this agent at; empty means `grpc.listen`.
    pub advertised_address: String,
    /// Lease length (by the metadata database's clock).
    #[serde(with = "cairn_service::units::duration")]
    pub lease: Duration,
    /// Renew leases and heartbeat this often.
    #[serde(with = "cairn_service::units::duration")]
    pub renew_interval: Duration,
    /// Stop writing this long before the lease could expire, by the local monotonic clock.
    #[serde(with = "cairn_service::units::duration")]
    pub lease_safety_margin: Duration,
    /// Take over partitions whose holder has acknowledged records not yet in
    /// object storage. Off by default: turning it on can lose acknowledged
    /// records (the old holder's WAL is not read).
    pub unclean_takeover: bool,
    /// Appends that may wait for a partition's writer before produce is refused.
    pub write_queue_depth: usize,
    /// Bytes a writer gathers into one write + fsync round.
    #[serde(with = "cairn_service::units::bytes_usize")]
    pub max_round_bytes: usize,
    /// Start a new WAL file past this size; files wholly below the committed
    /// offset are deleted.
    #[serde(with = "cairn_service::units::bytes")]
    pub wal_file_bytes: u64,
    /// Write WAL files into space prepared ahead (`wal_file_bytes` each), so
    /// an fdatasync changes no file size: a committed file recycled as it
    /// is, or one a helper thread zero-fills when none is waiting. A
    /// partition that has rotated keeps up to two such spares while it writes
    /// (`wal_spare_idle`).
    pub wal_preallocate: bool,
    /// A partition that has not appended for this long deletes its WAL
    /// spares (their disk back; writing again, it prepares new ones). Zero
    /// keeps them.
    #[serde(with = "cairn_service::units::duration")]
    pub wal_spare_idle: Duration,
    /// A batch that arrives ahead of its producer's sequence (its
    /// predecessors, sent just before it, are still on the way: requests race
    /// inside the agent) waits this long for them before it is refused as out
    /// of order. Never longer than half the caller's remaining deadline, so
    /// the refusal reaches it before it gives up. Zero refuses at once, and
    /// the producer resends it in turn.
    #[serde(with = "cairn_service::units::duration")]
    pub sequence_hold: Duration,
    /// How often each partition's retention and orphan-object sweep runs.
    #[serde(with = "cairn_service::units::duration")]
    pub retention_interval: Duration,
    /// Committed-ack produces arriving within this window share one segment
    /// (one upload, one metadata commit): at most one segment per window per
    /// partition, whatever the request rate.
    #[serde(with = "cairn_service::units::duration")]
    pub commit_linger: Duration,
    /// …unless this many bytes wait for a committed ack first.
    #[serde(with = "cairn_service::units::bytes")]
    pub commit_linger_bytes: u64,
    /// Segment uploads in flight at once across partitions.
    pub max_concurrent_uploads: usize,
    /// Longest a hand-off (SIGTERM, rebalancing) may take, all partitions
    /// together; what is not handed off by then stays with this agent.
    #[serde(with = "cairn_service::units::duration")]
    pub handoff_timeout: Duration,
    /// Segment block indexes kept in memory for reads below the WAL.
    pub segment_index_cache: usize,
    /// Memory for decoded segment blocks of reads below the WAL (their records' heap size).
    #[serde(with = "cairn_service::units::bytes_usize")]
    pub segment_block_cache: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            id: String::new(),
            data_dir: PathBuf::from("cairn-agent-data"),
            advertised_address: String::new(),
            lease: Duration::from_secs(10),
            renew_interval: Duration::from_secs(2),
            lease_safety_margin: Duration::from_secs(3),
            unclean_takeover: false,
            write_queue_depth: 4096,
            max_round_bytes: 8 * 1024 * 1024,
            wal_file_bytes: 64 * 1024 * 1024,
            wal_preallocate: true,
            wal_spare_idle: Duration::from_secs(60),
            sequence_hold: Duration::from_millis(500),
            retention_interval: Duration::from_secs(60),
            commit_linger: Duration::from_millis(50),
            commit_linger_bytes: 4 * 1024 * 1024,
            max_concurrent_uploads: 4,
            handoff_timeout: Duration::from_secs(10),
            segment_index_cache: 1024,
            segment_block_cache: 32 * 1024 * 1024,
        }
    }
}

/// The shared metadata database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetadataConfig {
    /// `sqlite://PATH?mode=rwc` or `postgres://…`; every agent of a cluster uses the same one.
    pub url: String,
    pub max_connections: u32,
}

impl Default for MetadataConfig {
    fn default() -> Self {
        MetadataConfig {
            url: "sqlite://cairn-metadata.db?mode=rwc".into(),
            max_connections: 8,
        }
    }
}

/// Limits enforced before anything is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest record (key + value + headers), bytes.
    #[serde(with = "cairn_service::units::bytes_usize")]
    pub max_record_bytes: usize,
    /// Largest produce request (sum of records), bytes.
    #[serde(with = "cairn_service::units::bytes_usize")]
    pub max_request_bytes: usize,
    /// Most records in one produce request.
    pub max_records_per_request: usize,
    /// Most partitions a topic may have.
    pub max_partitions_per_topic: u32,
    /// Most bytes one fetch returns (a single larger record is still returned).
    #[serde(with = "cairn_service::units::bytes_usize")]
    pub max_fetch_bytes: usize,
    /// Longest a fetch may wait for records.
    #[serde(with = "cairn_service::units::duration")]
    pub max_fetch_wait: Duration,
    /// Longest a committed-ack produce waits for its segment to be committed.
    #[serde(with = "cairn_service::units::duration")]
    pub max_commit_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_record_bytes: 1024 * 1024,
            max_request_bytes: 8 * 1024 * 1024,
            max_records_per_request: 10_000,
            max_partitions_per_topic: 1024,
            max_fetch_bytes: 8 * 1024 * 1024,
            max_fetch_wait: Duration::from_secs(30),
            max_commit_wait: Duration::from_secs(30),
        }
    }
}

impl ServiceConfig for Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.auth.enabled {
            self.auth.validate("auth")?;
        }
        let a = &self.agent;
        if a.lease < Duration::from_secs(1) {
            return Err(ConfigError::invalid("agent.lease", "must be at least 1s"));
        }
        if a.renew_interval.is_zero() || a.renew_interval * 2 > a.lease {
            return Err(ConfigError::invalid(
                "agent.renew_interval",
                "must be positive and at most half of agent.lease",
            ));
        }
        if a.lease_safety_margin + a.renew_interval >= a.lease {
            return Err(ConfigError::invalid(
                "agent.lease_safety_margin",
                "plus agent.renew_interval must be less than agent.lease",
            ));
        }
        if a.write_queue_depth == 0 {
            return Err(ConfigError::invalid(
                "agent.write_queue_depth",
                "must be greater than 0",
            ));
        }
        cairn_service::sql::check_config("metadata", &self.metadata.url, self.metadata.max_connections)?;
        let o = &self.object_store;
        if !(o.url.starts_with("file://") || o.url.starts_with("s3://")) {
            return Err(ConfigError::invalid(
                "object_store.url",
                "must start with file:// or s3://",
            ));
        }
        o.upload_backoff.validate("object_store.upload_backoff")?;
        let l = &self.limits;
        if l.max_record_bytes == 0 || l.max_record_bytes > l.max_request_bytes {
            return Err(ConfigError::invalid(
                "limits.max_record_bytes",
                "must be positive and at most limits.max_request_bytes",
            ));
        }
        // A request at the limit must fit the gRPC message limit (with framing room).
        if l.max_request_bytes + 1024 * 1024 > self.grpc.max_message_bytes {
            return Err(ConfigError::invalid(
                "limits.max_request_bytes",
                "must be at least 1 MiB below grpc.max_message_bytes",
            ));
        }
        if l.max_records_per_request == 0 || l.max_partitions_per_topic == 0 {
            return Err(ConfigError::invalid("limits", "counts must be greater than 0"));
        }
        Ok(())
    }

    cairn_service::standard_sections!();
}
