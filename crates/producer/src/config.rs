//! Producer settings and their builder.

use std::time::Duration;

use cairn_proto::cairn::agent::v1 as pb;

use crate::{ProduceError, Producer};

/// How far a write must get before the agent acknowledges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acks {
    /// Acknowledged on receipt, before any write; offsets are not reported.
    None,
    /// Written to the leader's memory, not yet fsynced.
    Leader,
    /// In the WAL and fsynced: survives `kill -9` of the agent. The default.
    #[default]
    Durable,
    /// In a segment committed to object storage: survives losing the agent's disk.
    Committed,
}

impl Acks {
    pub(crate) fn wire(self) -> pb::AckMode {
        match self {
            Acks::None => pb::AckMode::None,
            Acks::Leader => pb::AckMode::Leader,
            Acks::Durable => pb::AckMode::Durable,
            Acks::Committed => pb::AckMode::Committed,
        }
    }
}

impl std::str::FromStr for Acks {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" | "0" => Ok(Acks::None),
            "leader" | "1" => Ok(Acks::Leader),
            "durable" | "all" => Ok(Acks::Durable),
            "committed" => Ok(Acks::Committed),
            other => Err(format!("unknown ack mode {other:?} (none, leader, durable, committed)")),
        }
    }
}

/// How batches are compressed. LZ4 and zstd compress each batch's records
/// inside its frame, once, here: the agent stores the frame as it came, and
/// readers decompress (a batch that would not shrink is sent as it is).
/// gzip compresses the whole gRPC message instead, which the agent undoes on
/// receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Sent as encoded. The default: records are often small or already compressed,
    /// and on a fast network compression costs more CPU than it saves.
    #[default]
    None,
    /// gzip of the gRPC message: for clients and links that expect it.
    Gzip,
    /// LZ4 per batch: cheap; stays compressed in the WAL and in segments.
    Lz4,
    /// zstd per batch: smaller than LZ4 for more CPU; stays compressed too.
    Zstd,
}

impl Compression {
    /// The frame compression this setting asks for.
    pub fn frame(self) -> cairn_log::batch::Compression {
        match self {
            Compression::Lz4 => cairn_log::batch::Compression::Lz4,
            Compression::Zstd => cairn_log::batch::Compression::Zstd,
            Compression::None | Compression::Gzip => cairn_log::batch::Compression::None,
        }
    }
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            "lz4" => Ok(Compression::Lz4),
            "zstd" => Ok(Compression::Zstd),
            other => Err(format!("unknown compression {other:?} (none, gzip, lz4, zstd)")),
        }
    }
}

/// Everything a producer can be told. Build one with [`Producer::builder`].
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Agents to ask for metadata first; any one that answers is enough.
    pub bootstrap: Vec<String>,
    /// Sent as `authorization: Bearer …` on every call.
    pub api_key: Option<String>,
    pub acks: Acks,
    /// Idempotent produce: retries never duplicate a record. Default on.
    pub idempotence: bool,
    /// A stable name for this producer: a second instance with the same name
    /// fences the first. `None` gets a fresh identity with no fencing.
    pub name: Option<String>,
    /// A batch is sent once it holds this many bytes of encoded records…
    pub batch_bytes: usize,
    /// …or this many records…
    pub batch_records: usize,
    /// …or its first record has waited this long (and no earlier batch of the
    /// partition is unacknowledged). 0, the default, sends a batch as soon as
    /// the partition's previous one is acknowledged.
    pub linger: Duration,
    /// Batches of one partition on the wire at once (at most 5 with idempotence).
    pub max_in_flight: usize,
    /// Bytes of records buffered and unacknowledged across all partitions.
    pub buffer_bytes: usize,
    /// How long `send` waits for buffer space before failing.
    pub max_block: Duration,
    /// Deadline of each Produce call.
    pub request_timeout: Duration,
    /// How long a record may take from `send` to acknowledgement, retries included.
    pub delivery_timeout: Duration,
    /// Retry backoff: full jitter over `min(max, base × 2^attempt)`.
    pub retry_backoff_base: Duration,
    pub retry_backoff_max: Duration,
    /// Metadata is refreshed at least this often.
    pub metadata_max_age: Duration,
    /// HTTP/2 connections kept to each agent.
    pub connections_per_agent: usize,
    /// A connection unused this long is closed.
    pub connection_idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// Compression of Produce requests.
    pub compression: Compression,
    /// Calls carry a not-sampled trace context, so the agents trace none of
    /// this producer's writes (for a producer whose writes are telemetry).
    pub untraced: bool,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            bootstrap: vec!["127.0.0.1:50052".into()],
            api_key: None,
            acks: Acks::Durable,
            idempotence: true,
            name: None,
            batch_bytes: 1024 * 1024,
            batch_records: 10_000,
            linger: Duration::ZERO,
            max_in_flight: 5,
            buffer_bytes: 32 * 1024 * 1024,
            max_block: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            delivery_timeout: Duration::from_secs(60),
            retry_backoff_base: Duration::from_millis(20),
            retry_backoff_max: Duration::from_secs(1),
            metadata_max_age: Duration::from_secs(30),
            connections_per_agent: 2,
            connection_idle_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(3),
            compression: Compression::None,
            untraced: false,
        }
    }
}

/// The most batches in flight per partition that the agents' deduplication
/// window covers: more could let a retried batch slip past it.
pub const MAX_IDEMPOTENT_IN_FLIGHT: usize = 5;

/// The largest request body the producer builds (the agents' default message limit
/// is larger; leave headroom for the request head).
pub const MAX_REQUEST_BYTES: usize = 8 * 1024 * 1024;

/// The most records in one request (the agents' default limit).
pub const MAX_REQUEST_RECORDS: usize = 10_000;

impl ProducerConfig {
    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), ProduceError> {
        let bad = |what: &str| {
            Err(ProduceError::Rejected {
                code: tonic::Code::InvalidArgument,
                message: format!("producer config: {what}"),
            })
        };
        if self.bootstrap.is_empty() {
            return bad("bootstrap: at least one agent address is required");
        }
        if self.idempotence && self.max_in_flight > MAX_IDEMPOTENT_IN_FLIGHT {
            return bad("max_in_flight: at most 5 with idempotence");
        }
        if self.max_in_flight == 0 || self.batch_records == 0 || self.batch_bytes == 0 {
            return bad("max_in_flight, batch_records and batch_bytes must be at least 1");
        }
        if self.batch_records > MAX_REQUEST_RECORDS {
            return bad("batch_records: at most 10000");
        }
        if self.batch_bytes > MAX_REQUEST_BYTES {
            return bad("batch_bytes: at most 8 MiB");
        }
        if self.buffer_bytes < self.batch_bytes {
            return bad("buffer_bytes must hold at least one batch");
        }
        if self.connections_per_agent == 0 {
            return bad("connections_per_agent must be at least 1");
        }
        if self.delivery_timeout < self.linger + Duration::from_millis(1) {
            return bad("delivery_timeout must be longer than linger");
        }
        Ok(())
    }
}

/// Builds a [`Producer`].
#[derive(Debug, Clone, Default)]
pub struct ProducerBuilder {
    config: ProducerConfig,
    metrics: Option<cairn_client::Metrics>,
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.config.$name = value;
                self
            }
        )*
    };
}

impl ProducerBuilder {
    /// Starts from `config` instead of the defaults.
    pub fn from_config(config: ProducerConfig) -> Self {
        ProducerBuilder { config, metrics: None }
    }

    /// Reports into the embedding application's registry: the producer's
    /// counters (requests, errors, duplicates, buffer memory in use) and its
    /// outgoing RPCs.
    pub fn metrics(mut self, metrics: &cairn_client::Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Agents to bootstrap from.
    pub fn bootstrap<I, S>(mut self, addresses: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.bootstrap = addresses.into_iter().map(Into::into).collect();
        self
    }

    /// The API key sent with every call.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.config.api_key = Some(key.into());
        self
    }

    /// A stable name: a later instance with the same name fences this one.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = Some(name.into());
        self
    }

    setters! {
        /// How far a write must get before it is acknowledged.
        acks: Acks,
        /// Idempotent produce (default on).
        idempotence: bool,
        /// Batch size limit in bytes.
        batch_bytes: usize,
        /// Batch size limit in records.
        batch_records: usize,
        /// How long a batch waits for more records.
        linger: std::time::Duration,
        /// Batches in flight per partition.
        max_in_flight: usize,
        /// Total buffer memory.
        buffer_bytes: usize,
        /// How long `send` waits for buffer space.
        max_block: std::time::Duration,
        /// Deadline of each request.
        request_timeout: std::time::Duration,
        /// Bound on send-to-acknowledgement, retries included.
        delivery_timeout: std::time::Duration,
        /// First retry backoff bound.
        retry_backoff_base: std::time::Duration,
        /// Largest retry backoff bound.
        retry_backoff_max: std::time::Duration,
        /// Metadata refresh period.
        metadata_max_age: std::time::Duration,
        /// Connections per agent.
        connections_per_agent: usize,
        /// Idle connection lifetime.
        connection_idle_timeout: std::time::Duration,
        /// Compression of Produce requests.
        compression: Compression,
        /// Agents trace none of this producer's calls.
        untraced: bool,
    }

    /// The settings so far.
    pub fn config(&self) -> &ProducerConfig {
        &self.config
    }

    /// Checks the settings and starts the producer (inside a Tokio runtime).
    /// Nothing is contacted until the first record is sent.
    pub fn build(self) -> Result<Producer, ProduceError> {
        self.config.validate()?;
        Ok(Producer::start(self.config, self.metrics))
    }
}
