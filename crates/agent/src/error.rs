//! The agent's errors and their gRPC statuses (the mapping the proto documents).

use std::time::Duration;

use cairn_service::status;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

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
    /// Something that will pass: overload, recovery, a storage hiccup.
    #[error("{0}")]
    Retryable(String),
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
}

const DOMAIN: &str = "cairn.dev";

fn with_reason(code: Code, message: String, reason: &str, metadata: Vec<(String, String)>) -> Status {
    let details = ErrorDetails::with_error_info(
        reason,
        DOMAIN,
        metadata.into_iter().collect::<std::collections::HashMap<_, _>>(),
    );
    Status::with_error_details(code, message, details)
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        let message = error.to_string();
        match error {
            Error::InvalidArgument { field, reason } => status::invalid_argument(field, reason),
            Error::UnknownTopic(_) | Error::UnknownPartition { .. } => Status::not_found(message),
            Error::TopicExists(_) => Status::already_exists(message),
            Error::NotLeader { leader, .. } => {
                let metadata = leader
                    .map(|(id, address)| vec![("leader_id".to_owned(), id), ("leader_address".to_owned(), address)])
                    .unwrap_or_default();
                with_reason(Code::FailedPrecondition, message, "NOT_LEADER", metadata)
            }
            Error::ProducerFenced { .. } => with_reason(Code::FailedPrecondition, message, "PRODUCER_FENCED", vec![]),
            Error::OutOfOrderSequence { expected, .. } => with_reason(
                Code::FailedPrecondition,
                message,
                "OUT_OF_ORDER_SEQUENCE",
                vec![("expected_sequence".to_owned(), expected.to_string())],
            ),
            Error::UnknownProducer(_) => with_reason(Code::FailedPrecondition, message, "UNKNOWN_PRODUCER", vec![]),
            Error::OffsetOutOfRange { .. } => Status::out_of_range(message),
            Error::Retryable(_) => status::unavailable(message, Duration::from_millis(200)),
            Error::Corrupt(_) | Error::Io(_) => {
                tracing::error!(error = %message, "partition storage failed");
                status::unavailable("partition storage unavailable, retry later", Duration::from_secs(1))
            }
            Error::Database(_) | Error::Migrate(_) => {
                tracing::error!(error = %message, "metadata database failed");
                status::unavailable("metadata database unavailable, retry later", Duration::from_secs(1))
            }
        }
    }
}

/// Results in the agent.
pub type Result<T, E = Error> = std::result::Result<T, E>;
