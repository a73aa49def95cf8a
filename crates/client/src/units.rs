//! Durations and sizes as people write them in configuration: `"250ms"`,
//! `"30s"`, `"10m"`, `"1h30m"`; `"64MiB"`, `"4KiB"`, `"1GB"` (a plain integer
//! is bytes). Use as `#[serde(with = "cairn_client::units::duration")]` on a
//! `std::time::Duration` field and `units::bytes` / `units::bytes_usize` on
//! sizes.

use std::time::Duration;

/// Why a duration or size does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a {what} ({hint})")]
pub struct UnitError {
    text: String,
    what: &'static str,
    hint: &'static str,
}

const DURATION_HINT: &str = "write a number with a unit: ms, s, m, h, d, e.g. \"250ms\", \"30s\", \"1h30m\"";
const SIZE_HINT: &str = "write bytes, or a number with a unit: B, KiB, MiB, GiB, TiB, kB, MB, GB, e.g. \"64MiB\"";

/// Parses `"1h30m"`, `"250ms"`, `"0"`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let err = || UnitError {
        text: text.to_owned(),
        what: "duration",
        hint: DURATION_HINT,
    };
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let part = match &rest[..unit_len] {
            "ns" => Duration::from_nanos(n),
            "us" => Duration::from_micros(n),
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(err)?),
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(err)?),
            "d" => Duration::from_secs(n.checked_mul(86_400).ok_or_else(err)?),
            _ => return Err(err()),
        };
        total = total.checked_add(part).ok_or_else(err)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// Writes a duration in the largest unit that keeps it exact: `"30s"`, `"250ms"`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0".into();
    }
    let nanos = d.as_nanos();
    for (unit, size) in [
        ("d", 86_400_000_000_000u128),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if nanos.is_multiple_of(size) {
            return format!("{}{unit}", nanos / size);
        }
    }
    format!("{nanos}ns")
}

/// Parses `"64MiB"`, `"1GB"`, `"4096"`.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let err = || UnitError {
        text: text.to_owned(),
        what: "size",
        hint: SIZE_HINT,
    };
    let s = text.trim();
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(err());
    }
    let n: u64 = s[..digits].parse().map_err(|_| err())?;
    let factor: u64 = match s[digits..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(err()),
    };
    n.checked_mul(factor).ok_or_else(err)
}

/// Writes a size in the largest binary unit that keeps it exact: `"64MiB"`.
pub fn format_size(n: u64) -> String {
    if n == 0 {
        return "0".into();
    }
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n.trailing_zeros() >= shift {
            return format!("{}{unit}", n >> shift);
        }
    }
    format!("{n}B")
}

/// Serde for `Duration` fields as human-readable strings.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        super::parse_duration(&text).map_err(D::Error::custom)
    }
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum SizeText {
    Number(u64),
    Text(String),
}

fn size_from<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    use serde::{Deserialize, de::Error};
    match SizeText::deserialize(d)? {
        SizeText::Number(n) => Ok(n),
        SizeText::Text(t) => parse_size(&t).map_err(D::Error::custom),
    }
}

/// Serde for `u64` sizes: a number of bytes or a string with a unit.
pub mod bytes {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_size(*n))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        super::size_from(d)
    }
}

/// Serde for `usize` sizes, as [`bytes`].
pub mod bytes_usize {
    use serde::{Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(n: &usize, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_size(*n as u64))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        usize::try_from(super::size_from(d)?).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_parse_and_print_back() {
        for (text, d) in [
            ("250ms", Duration::from_millis(250)),
            ("30s", Duration::from_secs(30)),
            ("10m", Duration::from_secs(600)),
            ("1h30m", Duration::from_secs(5400)),
            ("2d", Duration::from_secs(172_800)),
            ("0", Duration::ZERO),
            ("1500us", Duration::from_micros(1500)),
        ] {
            assert_eq!(parse_duration(text).unwrap(), d, "{text}");
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        for bad in ["", "30", "s", "3x", "-1s", "1.5s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse_and_print_back() {
        for (text, n) in [
            ("64MiB", 64 << 20),
            ("4KiB", 4096),
            ("1GB", 1_000_000_000),
            ("4096", 4096),
            ("7B", 7),
            ("0", 0),
        ] {
            assert_eq!(parse_size(text).unwrap(), n, "{text}");
            assert_eq!(parse_size(&format_size(n)).unwrap(), n);
        }
        assert_eq!(format_size(8 << 20), "8MiB");
        assert_eq!(format_size(1000), "1000B");
        for bad in ["", "MiB", "1.5MiB", "12 parsecs", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_accepts_numbers_or_units_for_sizes_and_units_for_durations() {
        #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
        struct C {
            #[serde(with = "duration")]
            timeout: Duration,
            #[serde(with = "bytes")]
            size: u64,
        }
        let c: C = toml::from_str("timeout = \"30s\"\nsize = \"64MiB\"").unwrap();
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.size, 64 << 20);
        let c2: C = toml::from_str("timeout = \"1m\"\nsize = 4096").unwrap();
        assert_eq!(c2.size, 4096);
        assert!(
            toml::from_str::<C>("timeout = 30\nsize = 1").is_err(),
            "a bare number is not a duration"
        );
        assert_eq!(toml::to_string(&c).unwrap(), "timeout = \"30s\"\nsize = \"64MiB\"\n");
    }
}
