//! The error vocabulary every Cairn crate shares.
//!
//! Each crate's `Error` implements [`ServiceError`] — its code, its reason
//! (one of the [`ErrorReason`]s defined once in `cairn/common/v1/errors.proto`,
//! so clients in any language read the same strings), a retry delay, metadata
//! — and turns into a [`Status`] in one place, [`ServiceError::to_status`].
//! Statuses carry the standard `google.rpc` details: `ErrorInfo` (reason,
//! domain `cairn.dev`, metadata), `RetryInfo`, `BadRequest`.

use std::time::Duration;

pub use cairn_proto::cairn::common::v1::ErrorReason;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Cairn reason.
pub const DOMAIN: &str = "cairn.dev";

/// The wire string of a reason: its name without `ERROR_REASON_` ("NOT_LEADER").
pub fn reason_str(reason: ErrorReason) -> &'static str {
    let name = reason.as_str_name();
    name.strip_prefix("ERROR_REASON_").unwrap_or(name)
}

/// The Cairn reason a status carries, if any.
pub fn reason_of(status: &Status) -> Option<ErrorReason> {
    let info = status.get_details_error_info()?;
    if info.domain != DOMAIN {
        return None;
    }
    ErrorReason::from_str_name(&format!("ERROR_REASON_{}", info.reason)).filter(|r| *r != ErrorReason::Unspecified)
}

/// A metadata value of the status's `ErrorInfo`.
pub fn error_metadata(status: &Status, key: &str) -> Option<String> {
    status.get_details_error_info()?.metadata.get(key).cloned()
}

/// What a crate's error says about itself; [`ServiceError::to_status`] turns
/// it into the status the caller sees, the same way in every service.
pub trait ServiceError: std::error::Error {
    /// The gRPC code.
    fn code(&self) -> Code;
    /// The machine-readable reason, if the error has one.
    fn reason(&self) -> Option<ErrorReason> {
        None
    }
    /// When the caller may retry (retryable errors only).
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    /// `ErrorInfo` metadata (a leader's address, an expected sequence, …).
    fn metadata(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
    /// The request field that was wrong and why (`INVALID_ARGUMENT`).
    fn field_violation(&self) -> Option<(String, String)> {
        None
    }
    /// What the caller is told; internal detail stays in the server's log.
    fn public_message(&self) -> String {
        self.to_string()
    }
    /// The status, with its details.
    fn to_status(&self) -> Status {
        let mut details = ErrorDetails::new();
        let mut any = false;
        if let Some(reason) = self.reason() {
            let metadata: std::collections::HashMap<String, String> =
                self.metadata().into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            details.set_error_info(reason_str(reason), DOMAIN, metadata);
            any = true;
        }
        if let Some(after) = self.retry_after() {
            details.set_retry_info(Some(after));
            any = true;
        }
        if let Some((field, description)) = self.field_violation() {
            details.add_bad_request_violation(field, description);
            any = true;
        }
        if any {
            Status::with_error_details(self.code(), self.public_message(), details)
        } else {
            Status::new(self.code(), self.public_message())
        }
    }
}

/// A refusal made before anything was done because the server is at capacity:
/// `RESOURCE_EXHAUSTED`, reason OVERLOADED, with a retry delay. Not written.
pub fn overloaded(message: impl Into<String>, retry_after: Duration) -> Status {
    with_reason(
        Code::ResourceExhausted,
        message,
        ErrorReason::Overloaded,
        Some(retry_after),
    )
}

/// A status with a Cairn reason and, optionally, a retry delay.
pub fn with_reason(
    code: Code,
    message: impl Into<String>,
    reason: ErrorReason,
    retry_after: Option<Duration>,
) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason_str(reason), DOMAIN, std::collections::HashMap::new());
    if let Some(after) = retry_after {
        details.set_retry_info(Some(after));
    }
    Status::with_error_details(code, message, details)
}

/// `UNAVAILABLE` with a hint of when to retry: the caller may retry the same call.
pub fn unavailable(message: impl Into<String>, retry_after: Duration) -> Status {
    retryable(Code::Unavailable, message, retry_after)
}

/// `RESOURCE_EXHAUSTED` with a hint of when to retry (a quota or capacity limit).
pub fn resource_exhausted(message: impl Into<String>, retry_after: Duration) -> Status {
    retryable(Code::ResourceExhausted, message, retry_after)
}

fn retryable(code: Code, message: impl Into<String>, retry_after: Duration) -> Status {
    Status::with_error_details(code, message, ErrorDetails::with_retry_info(Some(retry_after)))
}

/// `INVALID_ARGUMENT` naming the one field that was wrong.
pub fn invalid_argument(field: impl Into<String>, description: impl Into<String>) -> Status {
    let (field, description) = (field.into(), description.into());
    let message = format!("{field}: {description}");
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// The retry delay a status carries, if any.
pub fn retry_after(status: &Status) -> Option<Duration> {
    status.get_details_retry_info().and_then(|info| info.retry_delay)
}

/// The fields an `INVALID_ARGUMENT` status names.
pub fn field_violations(status: &Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|b| {
            b.field_violations
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a client may retry a call that failed with `code` without risk of
/// changing its meaning.
pub fn is_retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::ResourceExhausted)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("not the leader")]
    struct NotLeader;

    impl ServiceError for NotLeader {
        fn code(&self) -> Code {
            Code::FailedPrecondition
        }
        fn reason(&self) -> Option<ErrorReason> {
            Some(ErrorReason::NotLeader)
        }
        fn metadata(&self) -> Vec<(&'static str, String)> {
            vec![("leader_address", "10.0.0.1:50052".into())]
        }
    }

    #[test]
    fn reasons_travel_as_their_names_without_the_prefix() {
        let status = NotLeader.to_status();
        assert_eq!(status.code(), Code::FailedPrecondition);
        let info = status.get_details_error_info().map(|i| (i.reason, i.domain));
        assert_eq!(info, Some(("NOT_LEADER".to_owned(), DOMAIN.to_owned())));
        assert_eq!(reason_of(&status), Some(ErrorReason::NotLeader));
        assert_eq!(
            error_metadata(&status, "leader_address").as_deref(),
            Some("10.0.0.1:50052")
        );
        assert_eq!(reason_str(ErrorReason::OutOfOrderSequence), "OUT_OF_ORDER_SEQUENCE");
        assert_eq!(reason_of(&Status::unavailable("bare")), None);
        let shed = overloaded("busy", Duration::from_millis(100));
        assert_eq!(
            (shed.code(), reason_of(&shed), retry_after(&shed)),
            (
                Code::ResourceExhausted,
                Some(ErrorReason::Overloaded),
                Some(Duration::from_millis(100))
            )
        );
    }

    #[test]
    fn retry_info_round_trips() {
        let s = unavailable("busy", Duration::from_millis(250));
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(retry_after(&s), Some(Duration::from_millis(250)));
        assert!(is_retryable(s.code()));
        assert_eq!(retry_after(&Status::unavailable("bare")), None);
    }

    #[test]
    fn field_violation_round_trips() {
        let s = invalid_argument("records[3].value", "larger than 1048576 bytes");
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().starts_with("records[3].value"));
        assert_eq!(
            field_violations(&s),
            vec![("records[3].value".into(), "larger than 1048576 bytes".into())]
        );
        assert!(!is_retryable(s.code()));
    }
}
