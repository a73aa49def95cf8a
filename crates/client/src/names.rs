//! Rules and conversions every Cairn crate applies the same way.

use cairn_proto::Timestamp;

/// Kafka's topic name rule: `[a-zA-Z0-9._-]`, 1–249 characters, not `.` or `..`.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What a rejected topic name was told.
pub const TOPIC_NAME_RULE: &str = "must be 1-249 characters of [a-zA-Z0-9._-], and not \".\" or \"..\"";

/// Unix milliseconds as a protobuf timestamp.
pub fn timestamp_from_ms(ms: i64) -> Timestamp {
    Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protobuf timestamp as unix milliseconds (`None` when out of range).
pub fn ms_from_timestamp(t: &Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return None;
    }
    t.seconds.checked_mul(1000)?.checked_add(i64::from(t.nanos / 1_000_000))
}

/// A protobuf timestamp as a `SystemTime` (`None` when out of range).
pub fn system_time_from_timestamp(t: &Timestamp) -> Option<std::time::SystemTime> {
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok()?;
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos))
}

/// Unix milliseconds now, by the wall clock (for timestamps, never for timeouts).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafkas_rule() {
        for ok in ["a", "clicks", "a.b-c_d", &"x".repeat(249)] {
            assert!(valid_topic_name(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a b", "a/b", "é", &"x".repeat(250)] {
            assert!(!valid_topic_name(bad), "{bad}");
        }
    }

    #[test]
    fn timestamps_round_trip_including_before_1970() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1001] {
            assert_eq!(ms_from_timestamp(&timestamp_from_ms(ms)), Some(ms), "{ms}");
        }
        let bad = Timestamp { seconds: 1, nanos: -5 };
        assert_eq!(ms_from_timestamp(&bad), None);
    }
}
