//! The auth crate's errors and their gRPC statuses.

use std::time::Duration;

use cairn_service::status;
use tonic::Status;

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

impl From<Error> for Status {
    fn from(error: Error) -> Status {
        match error {
            Error::InvalidKey => Status::unauthenticated("invalid API key"),
            Error::InvalidArgument { field, reason } => status::invalid_argument(field, reason),
            Error::NotFound(id) => Status::not_found(format!("no API key with id {id}")),
            Error::Revoked(id) => Status::failed_precondition(format!("API key {id} is revoked")),
            Error::AlreadyBootstrapped(id) => {
                Status::already_exists(format!("an admin key was already bootstrapped (key id {id})"))
            }
            // The key store failing is never the caller's fault and never a
            // reason to let anyone in: retryable, always.
            Error::Database(error) => {
                tracing::error!(%error, "key store failed");
                status::unavailable("key store unavailable, retry later", Duration::from_secs(1))
            }
            Error::Migrate(error) => {
                tracing::error!(%error, "key store schema is not usable");
                status::unavailable("key store unavailable, retry later", Duration::from_secs(5))
            }
        }
    }
}

/// Results in the auth crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
