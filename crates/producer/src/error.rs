//! Why a record was not delivered, and what that means for it.

use std::time::Duration;

use tonic::Code;

/// What became of a record that was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Certainly not written: rejected before it reached the log, or never sent.
    NotWritten,
    /// Unknown: an attempt may have been appended but no answer arrived before
    /// the delivery timeout. Reading the partition back tells.
    Unknown,
}

/// A record that was not delivered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProduceError {
    /// The record is larger than a request or the whole buffer may be.
    #[error("record of {size} bytes exceeds the {limit} byte limit ({what})")]
    RecordTooLarge {
        size: usize,
        limit: usize,
        what: &'static str,
    },
    /// The buffer stayed full for the whole bounded wait.
    #[error("buffer memory stayed full for {0:?}; the agents are not keeping up (or are unreachable)")]
    BufferFull(Duration),
    /// No such topic.
    #[error("unknown topic {0}")]
    UnknownTopic(String),
    /// The topic has no such partition.
    #[error("topic {topic} has no partition {partition} (it has {partitions})")]
    UnknownPartition {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    /// The producer was closed before the record was handed over.
    #[error("the producer is closed")]
    Closed,
    /// A newer instance of this producer took over (same name): this one may
    /// not write any more.
    #[error("fenced by a newer instance of this producer: {0}")]
    Fenced(String),
    /// The agent refused the batch for a reason retrying cannot fix.
    #[error("rejected with {code:?}: {message}")]
    Rejected { code: Code, message: String },
    /// The delivery timeout passed before the record was acknowledged.
    #[error("not acknowledged within the {after:?} delivery timeout{}", last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    TimedOut {
        after: Duration,
        /// Whether an attempt may have been appended.
        maybe_written: bool,
        last_error: Option<String>,
    },
}

impl ProduceError {
    /// What became of the record.
    pub fn fate(&self) -> Fate {
        match self {
            ProduceError::TimedOut {
                maybe_written: true, ..
            } => Fate::Unknown,
            _ => Fate::NotWritten,
        }
    }

    /// Whether the delivery timeout ran out (as opposed to a fatal refusal).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ProduceError::TimedOut { .. } | ProduceError::BufferFull(_))
    }
}
