//! The retry schedule of temporary failures (docs/delivery.md).
//!
//! The schedule lives on the queue: a deferred item is NAKed with the next
//! delay, so nothing but the queue holds it. The delay follows from the
//! delivery count the queue keeps (`attempt`): `retry_min_secs`, doubling,
//! at most `retry_max_secs`, with ±20 % jitter so that items deferred
//! together (one peer down) do not come back together. The lifetime is
//! measured from `received_at` in the envelope, so no restart or
//! redelivery can extend it.

use std::time::Duration;

use rand::Rng;

/// The schedule's settings.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// First retry.
    pub first: Duration,
    /// Longest interval.
    pub max: Duration,
    /// Bounce once the message is this old.
    pub lifetime: Duration,
}

impl Schedule {
    /// From `[delivery]`.
    pub fn from_config(d: &posthorn_config::DeliveryConfig) -> Self {
        Schedule {
            first: Duration::from_secs(d.retry_min_secs),
            max: Duration::from_secs(d.retry_max_secs),
            lifetime: Duration::from_secs(d.max_queue_lifetime_secs),
        }
    }

    /// The delay before the next try after the `attempt`-th (1-based)
    /// failed, without jitter.
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        self.first
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }

    /// [`Schedule::base_delay`] with ±20 % jitter, never past the end of
    /// the lifetime by more than a second (so the bounce comes on time),
    /// at least one second.
    pub fn delay(&self, attempt: u32, age: Duration) -> Duration {
        let base = self.base_delay(attempt).as_secs_f64();
        let jittered = base * rand::rng().random_range(0.8..=1.2);
        let left = self.lifetime.saturating_sub(age).as_secs_f64() + 1.0;
        Duration::from_secs_f64(jittered.min(left).max(1.0))
    }

    /// Whether a message accepted at `received_at` (Unix seconds) has
    /// outlived the schedule at `now`.
    pub fn expired(&self, received_at: i64, now: i64) -> bool {
        self.age(received_at, now) >= self.lifetime
    }

    /// How old the message is.
    pub fn age(&self, received_at: i64, now: i64) -> Duration {
        Duration::from_secs(now.saturating_sub(received_at).max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> Schedule {
        Schedule {
            first: Duration::from_secs(300),
            max: Duration::from_secs(3600),
            lifetime: Duration::from_secs(432_000),
        }
    }

    #[test]
    fn doubles_up_to_the_maximum() {
        let secs: Vec<u64> = (1..=6).map(|a| s().base_delay(a).as_secs()).collect();
        assert_eq!(secs, [300, 600, 1200, 2400, 3600, 3600]);
        assert_eq!(s().base_delay(u32::MAX).as_secs(), 3600);
    }

    #[test]
    fn jitter_stays_within_bounds() {
        for a in 1..10 {
            for _ in 0..50 {
                let d = s().delay(a, Duration::ZERO).as_secs_f64();
                let b = s().base_delay(a).as_secs_f64();
                assert!(
                    d >= b * 0.8 - 1e-6 && d <= b * 1.2 + 1e-6,
                    "{a}: {d} vs {b}"
                );
            }
        }
        // Near the end of the lifetime the delay is cut so the bounce is on time.
        let d = s().delay(9, Duration::from_secs(432_000 - 10));
        assert!(d <= Duration::from_secs(11), "{d:?}");
    }

    #[test]
    fn lifetime_from_received_at() {
        assert!(!s().expired(1_000, 1_000 + 431_999));
        assert!(s().expired(1_000, 1_000 + 432_000));
        // A clock step backwards never makes a message negative-aged.
        assert_eq!(s().age(2_000, 1_000), Duration::ZERO);
    }
}
