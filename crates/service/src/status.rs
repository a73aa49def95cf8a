//! Building blocks for each crate's `Error` → [`Status`] mapping.
//!
//! The mapping itself is every crate's own `match`; these helpers only attach the
//! standard details clients act on: `RetryInfo` on retryable statuses and
//! `BadRequest` field violations on invalid arguments.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

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
    use super::*;

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
