//! Per-request context the standard server records for handler code: the
//! caller's deadline, so outgoing calls can carry one no later than it.

use std::{future::Future, time::Duration};

use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Option<Instant>;
}

/// Runs `fut` with `deadline` as the current request's deadline (the standard
/// server does this for every handler).
pub async fn with_deadline<F: Future>(deadline: Option<Instant>, fut: F) -> F::Output {
    DEADLINE.scope(deadline, fut).await
}

/// Time left before the deadline of the request being handled, if it has one.
/// `Some(ZERO)` once the deadline has passed.
pub fn remaining() -> Option<Duration> {
    DEADLINE
        .try_with(|d| d.map(|d| d.saturating_duration_since(Instant::now())))
        .ok()
        .flatten()
}

/// Parses a `grpc-timeout` header value (`<up to 8 digits><unit>`, units
/// `H M S m u n`) as the gRPC spec defines it.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "5", "5s", "-5S", "123456789S", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn remaining_is_scoped_to_the_request() {
        assert_eq!(remaining(), None);
        let deadline = Instant::now() + Duration::from_secs(10);
        let left = with_deadline(Some(deadline), async { remaining() })
            .await
            .unwrap_or_default();
        assert!(left > Duration::from_secs(9) && left <= Duration::from_secs(10));
        assert_eq!(with_deadline(None, async { remaining() }).await, None);
    }
}
