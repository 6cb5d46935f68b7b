//! Capped exponential backoff with full jitter, for retrying transient DS failures.
//!
//! The ceiling doubles after every delay, from `initial` up to `max`; each delay is drawn
//! uniformly from `0..=ceiling` ("full jitter"), so that writers and readers that lost the
//! server at the same moment do not come back at the same moment either. The randomness
//! needs no quality beyond that: a xorshift generator seeded from the standard library's
//! per-process random hash keys.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Default first ceiling.
pub const DEFAULT_INITIAL: Duration = Duration::from_millis(100);
/// Default cap.
pub const DEFAULT_MAX: Duration = Duration::from_secs(10);

/// Retry delays; see the module documentation.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    ceiling: Duration,
    rng: u64,
}

impl Default for Backoff {
    /// 100 ms, doubling up to 10 s.
    fn default() -> Self {
        Backoff::new(DEFAULT_INITIAL, DEFAULT_MAX)
    }
}

impl Backoff {
    /// Delays start below `initial` and never exceed `max` (`initial` is raised to at least
    /// 1 ms and lowered to `max` if above it).
    #[must_use]
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(0x9e37_79b9_7f4a_7c15);
        Backoff::with_seed(initial, max, hasher.finish())
    }

    fn with_seed(initial: Duration, max: Duration, seed: u64) -> Backoff {
        let max = max.max(Duration::from_millis(1));
        let initial = initial.clamp(Duration::from_millis(1), max);
        Backoff {
            initial,
            max,
            ceiling: initial,
            // xorshift never leaves 0, so 0 is replaced.
            rng: if seed == 0 {
                0x2545_f491_4f6c_dd1d
            } else {
                seed
            },
        }
    }

    /// The delay to wait before the next attempt; the ceiling grows for the one after.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling_nanos = u64::try_from(self.ceiling.as_nanos()).unwrap_or(u64::MAX);
        let delay = Duration::from_nanos(self.random() % ceiling_nanos.saturating_add(1));
        self.ceiling = self.ceiling.saturating_mul(2).min(self.max);
        delay
    }

    /// Back to the first ceiling, after a success.
    pub fn reset(&mut self) {
        self.ceiling = self.initial;
    }

    /// The upper bound of the next delay, for logs.
    #[must_use]
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }

    /// xorshift64 (Marsaglia).
    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn delays_stay_within_a_doubling_ceiling() {
        let mut b = Backoff::with_seed(100 * MS, 10_000 * MS, 7);
        let mut ceiling = 100 * MS;
        for attempt in 0..20 {
            assert_eq!(b.ceiling(), ceiling, "attempt {attempt}");
            let d = b.next_delay();
            assert!(d <= ceiling, "attempt {attempt}: {d:?} above {ceiling:?}");
            ceiling = (ceiling * 2).min(10_000 * MS);
        }
        assert_eq!(b.ceiling(), 10_000 * MS, "capped at max");
    }

    #[test]
    fn delays_are_jittered_over_the_whole_range() {
        let mut b = Backoff::with_seed(DEFAULT_MAX, DEFAULT_MAX, 42);
        let delays: Vec<Duration> = (0..200).map(|_| b.next_delay()).collect();
        let low = delays.iter().filter(|d| **d < DEFAULT_MAX / 4).count();
        let high = delays.iter().filter(|d| **d > DEFAULT_MAX * 3 / 4).count();
        assert!(
            low > 20 && high > 20,
            "not spread out: {low} low, {high} high"
        );
        assert!(delays.iter().all(|d| *d <= DEFAULT_MAX));
    }

    #[test]
    fn delays_grow_on_average() {
        let mut b = Backoff::with_seed(MS, MS * (1 << 20), 3);
        let first: Duration = (0..4).map(|_| b.next_delay()).sum();
        (0..8).for_each(|_| {
            b.next_delay();
        });
        let later: Duration = (0..4).map(|_| b.next_delay()).sum();
        assert!(later > first * 10, "{first:?} then {later:?}");
    }

    #[test]
    fn reset_returns_to_the_initial_ceiling() {
        let mut b = Backoff::default();
        for _ in 0..10 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), DEFAULT_MAX);
        b.reset();
        assert_eq!(b.ceiling(), DEFAULT_INITIAL);
        assert!(b.next_delay() <= DEFAULT_INITIAL);
    }

    #[test]
    fn odd_bounds_are_clamped() {
        let mut b = Backoff::with_seed(Duration::ZERO, Duration::ZERO, 0);
        assert_eq!(b.ceiling(), MS);
        assert!(b.next_delay() <= MS);
        let b = Backoff::new(20 * MS, 5 * MS);
        assert_eq!(b.ceiling(), 5 * MS, "initial above max is lowered to max");
    }

    #[test]
    fn two_backoffs_draw_different_delays() {
        let mut a = Backoff::new(DEFAULT_MAX, DEFAULT_MAX);
        let mut b = Backoff::new(DEFAULT_MAX, DEFAULT_MAX);
        let same = (0..8).filter(|_| a.next_delay() == b.next_delay()).count();
        assert!(same < 8, "independent backoffs drew identical delays");
    }
}
