//! The retry policy as data: when a pending entry is due for another attempt,
//! when it has had enough, and every horizon derived from it (heartbeats,
//! leases, the life of outcome markers). Pure functions, property-tested.
//! Nothing here is a constant of its own: a test shrinks `[retry]` and every
//! horizon shrinks with it.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::shared::config::RetrySettings;

/// Backoff and give-up rules, from `[retry]`.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub max_deliveries: u32,
    pub jitter: f64,
    /// The longest an entry is retried, from when it entered the stream.
    pub max_age: Duration,
}

impl RetryPolicy {
    pub fn from_settings(s: &RetrySettings) -> RetryPolicy {
        RetryPolicy {
            base_delay: s.base_delay,
            max_delay: s.max_delay,
            max_deliveries: s.max_deliveries,
            jitter: s.jitter,
            max_age: s.max_age,
        }
    }

    /// How long an entry delivered `deliveries` times waits (idle) before the next attempt:
    /// `min(max_delay, base_delay · 2^(deliveries−1))`, plus up to `jitter` of it, never past the cap.
    ///
    /// `seed` picks the jitter; derive it from the entry id so that every
    /// reclaimer computes the same schedule for the same entry.
    pub fn backoff(&self, deliveries: u64, seed: u64) -> Duration {
        let exponent = deliveries.saturating_sub(1).min(32) as u32;
        let raw = self
            .base_delay
            .checked_mul(1u32 << exponent.min(31))
            .unwrap_or(self.max_delay)
            .min(self.max_delay);
        let fraction = (seed % 10_000) as f64 / 10_000.0 * self.jitter;
        raw.mul_f64(1.0 + fraction).min(self.max_delay).max(raw)
    }

    /// Whether an entry is due: idle at least its backoff, and past any not-before time.
    pub fn is_due(&self, idle: Duration, deliveries: u64, seed: u64, wait_left: Duration) -> bool {
        idle >= self.backoff(deliveries, seed) && wait_left.is_zero()
    }

    /// Whether an entry that failed on its `attempt`-th delivery should be given up on.
    pub fn exhausted(&self, attempt: u64) -> bool {
        attempt >= u64::from(self.max_deliveries)
    }

    /// Whether an entry that entered its stream at `added` may no longer be retried at `now`.
    pub fn past_max_age(&self, added: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        (now - added).to_std().is_ok_and(|age| age >= self.max_age)
    }

    /// How long the per-event outcome markers live after their last write: twice the
    /// longest an entry is retried, so no retry of it finds a device's marker gone.
    pub fn markers_ttl(&self) -> Duration {
        self.max_age.saturating_mul(2).max(Duration::from_secs(1))
    }

    /// How often an entry in progress refreshes its idle time, lease and key lock:
    /// twice per base delay, so no reclaimer mistakes it for abandoned.
    pub fn heartbeat(&self) -> Duration {
        (self.base_delay / 2).max(Duration::from_millis(50))
    }

    /// How long a lease (an entry's, or a key's lock) lasts without a heartbeat:
    /// four heartbeats (one may time out, taking a heartbeat, and the next still
    /// lands in time), at least a second.
    pub fn lease(&self) -> Duration {
        self.heartbeat()
            .saturating_mul(4)
            .max(Duration::from_secs(1))
    }
}

/// A stable seed for an entry's jitter.
pub fn seed_for(id: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
            max_deliveries: 8,
            jitter,
            max_age: Duration::from_secs(3600),
        }
    }

    #[test]
    fn the_schedule_doubles_from_the_base_up_to_the_cap() {
        let p = policy(0.0);
        let secs: Vec<f64> = (1..=8).map(|d| p.backoff(d, 0).as_secs_f64()).collect();
        assert_eq!(secs, vec![0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]);
    }

    proptest! {
        #[test]
        fn never_below_the_base_never_above_the_cap(deliveries in 0u64..10_000, seed: u64, jitter in 0.0f64..=1.0) {
            let p = policy(jitter);
            let d = p.backoff(deliveries, seed);
            prop_assert!(d >= p.base_delay);
            prop_assert!(d <= p.max_delay);
        }

        #[test]
        fn non_decreasing_without_jitter(deliveries in 1u64..10_000) {
            let p = policy(0.0);
            prop_assert!(p.backoff(deliveries + 1, 0) >= p.backoff(deliveries, 0));
        }

        #[test]
        fn jitter_only_adds(deliveries in 1u64..64, seed: u64) {
            let with = policy(0.5).backoff(deliveries, seed);
            let without = policy(0.0).backoff(deliveries, seed);
            prop_assert!(with >= without);
            prop_assert!(with.as_secs_f64() <= without.as_secs_f64() * 1.5 + 1e-9);
        }
    }

    #[test]
    fn an_entry_is_due_only_after_its_backoff_and_any_retry_after() {
        let p = policy(0.0);
        assert!(!p.is_due(Duration::from_millis(100), 1, 0, Duration::ZERO));
        assert!(p.is_due(Duration::from_millis(250), 1, 0, Duration::ZERO));
        assert!(!p.is_due(Duration::from_secs(60), 1, 0, Duration::from_secs(1)));
        assert!(!p.exhausted(7));
        assert!(p.exhausted(8));
    }

    #[test]
    fn horizons_follow_the_settings() {
        let p = policy(0.0);
        assert_eq!(p.markers_ttl(), Duration::from_secs(7200));
        assert!(p.lease() > p.heartbeat());
        let now = Utc::now();
        assert!(!p.past_max_age(now - chrono::Duration::minutes(59), now));
        assert!(p.past_max_age(now - chrono::Duration::minutes(60), now));
        assert!(
            !p.past_max_age(now + chrono::Duration::minutes(5), now),
            "a clock ahead is young"
        );
    }
}
