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

/// `YYYY-MM-DDTHH:MM:SSZ` for a timestamp.
pub fn format_timestamp(t: &Timestamp) -> String {
    let days = t.seconds.div_euclid(86_400);
    let secs = t.seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// RFC 3339 with milliseconds (`2026-12-02T05:41:00.123Z`) for unix milliseconds.
pub fn rfc3339_ms(ms: i64) -> String {
    let text = format_timestamp(&timestamp_from_ms(ms));
    format!("{}.{:03}Z", text.trim_end_matches('Z'), ms.rem_euclid(1000))
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
