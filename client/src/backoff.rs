//! [`Backoff`]: exponential delays between reconnection (or retry)
//! attempts, doubling from a minimum up to a maximum.
//!
//! It only computes delays; callers sleep.

use std::time::Duration;

/// The default smallest delay of [`Backoff`].
pub(crate) const DEFAULT_MIN: Duration = Duration::from_millis(50);
/// The default largest delay of [`Backoff`].
pub(crate) const DEFAULT_MAX: Duration = Duration::from_secs(5);

/// Doubling delays from `min` to `max`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Delays from `min` up to `max` (raised to `min` when smaller).
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The delay before the next attempt; each call doubles the following
    /// one, up to the maximum.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = delay.saturating_mul(2).min(self.max);
        delay
    }

    /// Starts again from the minimum, after a success.
    pub(crate) fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        let delays: Vec<u128> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [50, 100, 200, 300, 300]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(50));
    }

    #[test]
    fn a_maximum_below_the_minimum_is_raised() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::ZERO);
        assert_eq!(backoff.next_delay(), Duration::from_secs(1));
        assert_eq!(backoff.next_delay(), Duration::from_secs(1));
    }
}
