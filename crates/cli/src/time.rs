//! Durations typed by people (`90d`, `12h`) and timestamps shown to them (UTC ISO-8601).

use std::time::Duration;

use anyhow::bail;

/// Parses `<number><unit>` with unit `s`, `m`, `h` or `d`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let Ok(n) = digits.parse::<u64>() else {
        bail!("`{text}` is not a duration like 30s, 15m, 12h or 90d");
    };
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => bail!("`{text}` is not a duration like 30s, 15m, 12h or 90d"),
    };
    Ok(Duration::from_secs(secs))
}

pub use cairn_client::names::format_timestamp;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use cairn_proto::Timestamp;

    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90d").unwrap(), Duration::from_secs(90 * 86_400));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        for bad in ["", "d", "10", "1.5h", "10w", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn timestamps() {
        let at = |seconds| format_timestamp(&Timestamp { seconds, nanos: 0 });
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_392_000 + 3_661), "2026-11-23T01:01:01Z");
    }
}
