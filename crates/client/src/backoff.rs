//! The one retry policy: exponential backoff with full jitter (a uniform pick
//! in `[0, min(max, base × 2^attempt)]`), never sooner than a server asked.
//! Used by the producer's retries, the agent's upload retries and its retries
//! of partitions it cannot serve.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Exponential backoff with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// The first retry's upper bound.
    #[serde(with = "crate::units::duration")]
    pub base: Duration,
    /// No retry waits longer.
    #[serde(with = "crate::units::duration")]
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// A policy from `base` up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// The ceiling of retry `attempt` (0 for the first): `min(max, base × 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// How long to wait before retry `attempt`: full jitter under
    /// [`Backoff::ceiling`], but no sooner than `at_least` (a server's hint).
    pub fn delay(&self, attempt: u32, at_least: Option<Duration>) -> Duration {
        let ceiling = self.ceiling(attempt);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        let jittered = Duration::from_nanos(if nanos == 0 { 0 } else { rand::random_range(0..=nanos) });
        jittered.max(at_least.unwrap_or_default())
    }

    /// Checks the values, naming fields under `section`.
    pub fn validate(&self, section: &str) -> Result<(), crate::channel::InvalidField> {
        if self.base.is_zero() || self.base > self.max {
            return Err(crate::channel::InvalidField::new(
                format!("{section}.base"),
                "must be positive and at most max",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_stay_under_a_doubling_ceiling_capped_at_max() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(300));
        assert_eq!(b.ceiling(0), Duration::from_millis(10));
        assert_eq!(b.ceiling(3), Duration::from_millis(80));
        assert_eq!(b.ceiling(10), Duration::from_millis(300));
        assert_eq!(b.ceiling(200), Duration::from_millis(300), "no overflow");
        for attempt in 0..12 {
            for _ in 0..50 {
                assert!(b.delay(attempt, None) <= b.ceiling(attempt));
            }
        }
        // Jitter: not always the ceiling.
        let picks: std::collections::HashSet<Duration> = (0..50).map(|_| b.delay(5, None)).collect();
        assert!(picks.len() > 10);
    }

    #[test]
    fn a_server_hint_is_a_floor() {
        let b = Backoff::new(Duration::from_millis(1), Duration::from_millis(5));
        for _ in 0..50 {
            assert!(b.delay(0, Some(Duration::from_millis(200))) >= Duration::from_millis(200));
        }
    }
}
