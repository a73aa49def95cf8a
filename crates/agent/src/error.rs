//! The agent's errors and their gRPC statuses (the mapping the proto
//! documents), through the shared vocabulary (`cairn_service::ServiceError`):
//! every code, reason and retry delay is decided here, once.

use std::{sync::Arc, time::Duration};

use cairn_object_store::StoreError;
use cairn_service::{ErrorReason, ServiceError};
use tonic::{Code, Status};

/// What can go wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is wrong.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// No such topic.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// The topic exists but has no such partition.
    #[error("topic {topic} has no partition {partition}")]
    UnknownPartition { topic: String, partition: u32 },
    /// A topic with that name exists.
    #[error("topic {0} already exists")]
    TopicExists(String),
    /// This agent does not lead the partition.
    #[error("not the leader of {topic}/{partition}")]
    NotLeader {
        topic: String,
        partition: u32,
        leader: Option<(String, String)>,
    },
    /// This agent holds the lease and is still opening the partition.
    #[error("{topic}/{partition} is opening here; retry shortly")]
    PartitionMoving { topic: String, partition: u32 },
    /// This agent holds the lease but cannot serve the partition.
    #[error(
        "{topic}/{partition} is held here but not served ({detail}); an operator may need to act, see the agent's log"
    )]
    PartitionUnavailable {
        topic: String,
        partition: u32,
        detail: String,
    },
    /// A newer epoch of this producer exists.
    #[error("producer {producer_id} epoch {epoch} is fenced by epoch {current}")]
    ProducerFenced { producer_id: u64, epoch: u32, current: u32 },
    /// The batch does not continue the producer's sequence.
    #[error("producer {producer_id}: expected sequence {expected}, got {got}")]
    OutOfOrderSequence { producer_id: u64, expected: u64, got: u64 },
    /// A producer id this agent never issued.
    #[error("unknown producer id {0}")]
    UnknownProducer(u64),
    /// Fetch offset outside [log start, high watermark].
    #[error("offset {offset} is outside [{start}, {end}]")]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    /// The partition's write queue is full: refused before anything was written.
    #[error("{partition}: write queue full")]
    Overloaded { partition: String },
    /// The records are durable but their segment was not committed in time.
    #[error("offsets {from}..{to} are durable but not yet committed to object storage")]
    NotCommitted { from: u64, to: u64 },
    /// Two InitProducer calls raced for one name.
    #[error("concurrent InitProducer for the same name; retry")]
    InitRace,
    /// The partition's writer stopped while the append was queued: it may or
    /// may not have been written.
    #[error("{partition}: the partition writer stopped")]
    WriterStopped { partition: String },
    /// The partition's storage failed; it takes no more writes here.
    #[error("{partition}: storage failed")]
    StorageFailed {
        partition: String,
        #[source]
        source: Arc<Error>,
    },
    /// A WAL file went away under a read (it was just covered by segments).
    #[error("the WAL moved on during the read; retry")]
    ReadRace,
    /// The object store failed.
    #[error("object store: {what}")]
    ObjectStore {
        what: String,
        #[source]
        source: StoreError,
    },
    /// A bounded step did not finish.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// A blocking task failed (a bug: it panicked).
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// Work on a background thread failed (a bug: it panicked).
    #[error("{0}")]
    Offload(#[from] cairn_service::offload::OffloadError),
    /// The WAL is damaged in a way recovery must not paper over.
    #[error("WAL corrupt: {0}")]
    Corrupt(String),
    /// Local disk I/O failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The metadata database failed.
    #[error("metadata database: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("metadata migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl Error {
    /// A field of the request is wrong.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// An object store failure while doing `what`.
    pub fn store(what: impl Into<String>) -> impl FnOnce(StoreError) -> Error {
        let what = what.into();
        move |source| Error::ObjectStore { what, source }
    }
}

impl From<cairn_log::store::ReadError> for Error {
    fn from(e: cairn_log::store::ReadError) -> Self {
        match e {
            cairn_log::store::ReadError::Store { key, source } => Error::ObjectStore {
                what: format!("reading {key}"),
                source,
            },
            cairn_log::store::ReadError::Corrupt { key, source } => Error::Corrupt(format!("{key}: {source}")),
        }
    }
}

impl ServiceError for Error {
    fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::UnknownTopic(_) | Error::UnknownPartition { .. } => Code::NotFound,
            Error::TopicExists(_) => Code::AlreadyExists,
            Error::NotLeader { .. }
            | Error::ProducerFenced { .. }
            | Error::OutOfOrderSequence { .. }
            | Error::UnknownProducer(_) => Code::FailedPrecondition,
            Error::OffsetOutOfRange { .. } => Code::OutOfRange,
            Error::Overloaded { .. } => Code::ResourceExhausted,
            Error::Task(_) | Error::Offload(_) => Code::Internal,
            Error::PartitionMoving { .. }
            | Error::PartitionUnavailable { .. }
            | Error::NotCommitted { .. }
            | Error::InitRace
            | Error::WriterStopped { .. }
            | Error::StorageFailed { .. }
            | Error::ReadRace
            | Error::ObjectStore { .. }
            | Error::Timeout(_)
            | Error::Corrupt(_)
            | Error::Io(_)
            | Error::Database(_)
            | Error::Migrate(_) => Code::Unavailable,
        }
    }

    fn reason(&self) -> Option<ErrorReason> {
        Some(match self {
            Error::NotLeader { .. } => ErrorReason::NotLeader,
            Error::ProducerFenced { .. } => ErrorReason::ProducerFenced,
            Error::OutOfOrderSequence { .. } => ErrorReason::OutOfOrderSequence,
            Error::UnknownProducer(_) => ErrorReason::UnknownProducer,
            Error::Overloaded { .. } => ErrorReason::Overloaded,
            Error::PartitionMoving { .. } => ErrorReason::PartitionMoving,
            Error::PartitionUnavailable { .. } => ErrorReason::PartitionUnavailable,
            Error::NotCommitted { .. } => ErrorReason::NotCommitted,
            Error::StorageFailed { .. }
            | Error::ObjectStore { .. }
            | Error::Corrupt(_)
            | Error::Io(_)
            | Error::Database(_)
            | Error::Migrate(_) => ErrorReason::DependencyUnavailable,
            _ => return None,
        })
    }

    fn retry_after(&self) -> Option<Duration> {
        match self.code() {
            Code::ResourceExhausted => Some(Duration::from_millis(50)),
            Code::Unavailable => Some(match self {
                Error::PartitionUnavailable { .. } => Duration::from_secs(5),
                Error::ReadRace => Duration::from_millis(10),
                Error::StorageFailed { .. }
                | Error::Corrupt(_)
                | Error::Io(_)
                | Error::Database(_)
                | Error::Migrate(_)
                | Error::ObjectStore { .. } => Duration::from_secs(1),
                _ => Duration::from_millis(200),
            }),
            _ => None,
        }
    }

    fn metadata(&self) -> Vec<(&'static str, String)> {
        match self {
            Error::NotLeader {
                leader: Some((id, address)),
                ..
            } => vec![("leader_id", id.clone()), ("leader_address", address.clone())],
            Error::OutOfOrderSequence { expected, .. } => vec![("expected_sequence", expected.to_string())],
            Error::PartitionUnavailable { detail, .. } => vec![("detail", detail.clone())],
            _ => Vec::new(),
        }
    }

    fn field_violation(&self) -> Option<(String, String)> {
        match self {
            Error::InvalidArgument { field, reason } => Some((field.clone(), reason.clone())),
            _ => None,
        }
    }

    fn public_message(&self) -> String {
        match self {
            Error::StorageFailed { .. } | Error::Corrupt(_) | Error::Io(_) => {
                "partition storage unavailable, retry later".into()
            }
            Error::Database(_) | Error::Migrate(_) => "metadata database unavailable, retry later".into(),
            Error::Task(_) | Error::Offload(_) => "internal error".into(),
            other => other.to_string(),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        // Failures of the agent's own storage are logged here, where the call
        // that met them is answered; the caller is told only that it may retry.
        match &error {
            Error::StorageFailed { .. } | Error::Corrupt(_) | Error::Io(_) | Error::Task(_) | Error::Offload(_) => {
                tracing::error!(error = %error, source = ?std::error::Error::source(&error).map(ToString::to_string), "partition storage failed");
            }
            Error::Database(_) | Error::Migrate(_) => tracing::error!(%error, "metadata database failed"),
            _ => {}
        }
        error.to_status()
    }
}

/// Results in the agent.
pub type Result<T, E = Error> = std::result::Result<T, E>;
