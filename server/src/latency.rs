//! [`LatencyHistogram`]: durations counted into fixed buckets with atomic
//! increments only, for what is timed once per message or per write (the
//! end-to-end latency, storage writes and syncs), where a lock per
//! observation would cost more than the thing measured. The metrics
//! endpoint reads a [`LatencySnapshot`] of it at each scrape.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The upper bound of the first bucket, in nanoseconds: 50 µs.
const FIRST_BOUND_NANOS: u64 = 50_000;
/// Buckets with a bound, each twice the one before: 50 µs to about 13 s.
const BOUNDED: usize = 19;

/// A histogram of durations over buckets from 50 µs doubling to about
/// 13 s, plus one for anything longer. Observing is three relaxed atomic
/// additions; nothing locks or allocates.
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last is unbounded.
    buckets: [AtomicU64; BOUNDED + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

/// The bucket a duration of `nanos` falls in: the first whose bound is at
/// least `nanos`.
fn bucket_of(nanos: u64) -> usize {
    if nanos <= FIRST_BOUND_NANOS {
        return 0;
    }
    // Bound k is FIRST << k: the bucket is ceil(log2(nanos / FIRST)).
    let quotient = (nanos - 1) / FIRST_BOUND_NANOS;
    let bucket = (u64::BITS - quotient.leading_zeros()) as usize;
    bucket.min(BOUNDED)
}

impl LatencyHistogram {
    /// Counts one duration.
    pub fn observe(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(nanos)].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts as they are now. Observations under way may show in
    /// some figures and not yet in others; the next snapshot has them.
    pub fn snapshot(&self) -> LatencySnapshot {
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(k, bucket)| {
                let bound = if k < BOUNDED {
                    Duration::from_nanos(FIRST_BOUND_NANOS << k).as_secs_f64()
                } else {
                    f64::INFINITY
                };
                (bound, bucket.load(Ordering::Relaxed))
            })
            .collect();
        LatencySnapshot {
            buckets,
            sum_seconds: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64(),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's figures at one moment, in the shape of the Prometheus
/// text format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencySnapshot {
    /// Upper bounds in seconds, ascending, with how many observations
    /// fell between the bound before and this one; the last bound is
    /// infinite.
    pub buckets: Vec<(f64, u64)>,
    /// The observed durations added up, in seconds.
    pub sum_seconds: f64,
    /// How many durations were observed.
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_falls_in_the_first_bucket_whose_bound_holds_it() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(50_000), 0);
        assert_eq!(bucket_of(50_001), 1);
        assert_eq!(bucket_of(100_000), 1);
        assert_eq!(bucket_of(100_001), 2);
        assert_eq!(bucket_of(200_000), 2);
        assert_eq!(bucket_of(200_001), 3);
        assert_eq!(bucket_of(FIRST_BOUND_NANOS << (BOUNDED - 1)), BOUNDED - 1);
        assert_eq!(bucket_of(u64::MAX), BOUNDED);
    }

    #[test]
    fn a_snapshot_counts_per_bucket_and_sums() {
        let histogram = LatencyHistogram::default();
        histogram.observe(Duration::from_micros(10));
        histogram.observe(Duration::from_micros(150));
        histogram.observe(Duration::from_secs(100));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 3);
        assert_eq!(snapshot.buckets.len(), BOUNDED + 1);
        assert_eq!(snapshot.buckets[0], (0.000_05, 1));
        assert_eq!(snapshot.buckets[1], (0.000_1, 0));
        assert_eq!(snapshot.buckets[2], (0.000_2, 1));
        // 100 s is beyond every bound.
        assert_eq!(snapshot.buckets[BOUNDED], (f64::INFINITY, 1));
        assert!((snapshot.sum_seconds - 100.000_16).abs() < 1e-9);
    }
}
