//! The auth crate's errors and their gRPC statuses.

use std::time::Duration;

use cairn_service::{ErrorReason, ServiceError};
use tonic::{Code, Status};

/// What can go wrong in the auth service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed, unknown, revoked or expired; deliberately not saying which.
    #[error("invalid API key")]
    InvalidKey,
    /// A request field is wrong.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// No key has this id.
    #[error("no API key with id {0}")]
    NotFound(String),
    /// The key is revoked, so it can't be rotated.
    #[error("API key {0} is revoked")]
    Revoked(String),
    /// `bootstrap-admin` already ran.
    #[error("an admin key was already bootstrapped (key id {0})")]
    AlreadyBootstrapped(String),
    /// The database can't be reached or failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Schema migrations failed.
    #[error("database migration failed: {0}")]
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

impl ServiceError for Error {
    fn code(&self) -> Code {
        match self {
            Error::InvalidKey => Code::Unauthenticated,
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::Revoked(_) => Code::FailedPrecondition,
            Error::AlreadyBootstrapped(_) => Code::AlreadyExists,
            // The key store failing is never the caller's fault and never a
            // reason to let anyone in: retryable, always.
            Error::Database(_) | Error::Migrate(_) => Code::Unavailable,
        }
    }

    fn reason(&self) -> Option<ErrorReason> {
        matches!(self, Error::Database(_) | Error::Migrate(_)).then_some(ErrorReason::DependencyUnavailable)
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Database(_) => Some(Duration::from_secs(1)),
            Error::Migrate(_) => Some(Duration::from_secs(5)),
            _ => None,
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
            Error::Database(_) | Error::Migrate(_) => "key store unavailable, retry later".into(),
            other => other.to_string(),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        if matches!(error, Error::Database(_) | Error::Migrate(_)) {
            tracing::error!(%error, "key store failed");
        }
        error.to_status()
    }
}

/// Results in the auth crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
