//! Keeps per-method call statistics cheaply on the hot path: completed, failed and aborted
//! counts and a lock-free log-linear latency histogram, read by the `_zmesh.stats` built-in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Exact buckets for 0..LINEAR_LIMIT microseconds, then [`SUB_BUCKETS`] per power of two.
const LINEAR_LIMIT: u64 = 16;
/// Buckets per power of two above [`LINEAR_LIMIT`]: about 12% resolution.
const SUB_BUCKETS: u64 = 8;
/// log2 of [`SUB_BUCKETS`].
const SUB_BITS: u32 = 3;
/// Enough buckets for any u64 number of microseconds.
const BUCKETS: usize = (LINEAR_LIMIT + (64 - 4) * SUB_BUCKETS) as usize;

/// The statistics of one method, shared by every name it is exported under.
#[derive(Debug)]
pub(crate) struct MethodStats {
    ok: AtomicU64,
    errors: AtomicU64,
    aborted: AtomicU64,
    max_us: AtomicU64,
    buckets: Box<[AtomicU64]>,
}

impl Default for MethodStats {
    fn default() -> Self {
        Self {
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The handler returned a value or a stream.
    Ok,
    /// The handler returned an error (including argument decoding errors) or panicked.
    Error,
    /// The call was dropped before it finished: deadline, cancel, lost client or shutdown.
    Aborted,
}

/// Figures of one method at one moment. Percentiles are bucket upper bounds (within about
/// 12% above the true value), in microseconds; 0 when no call has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub(crate) struct MethodSnapshot {
    pub(crate) calls: u64,
    pub(crate) errors: u64,
    pub(crate) aborted: u64,
    pub(crate) p50_us: u64,
    pub(crate) p90_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) max_us: u64,
}

impl MethodStats {
    /// Records one finished (or aborted) call.
    pub(crate) fn record(&self, elapsed: Duration, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Ok => &self.ok,
            Outcome::Error => &self.errors,
            Outcome::Aborted => &self.aborted,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// The figures now (counts and buckets are read one by one, so a snapshot taken during
    /// traffic may be off by the calls that finished while it was read).
    pub(crate) fn snapshot(&self) -> MethodSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let max_us = self.max_us.load(Ordering::Relaxed);
        let at = |q: f64| percentile(&counts, q).min(max_us);
        MethodSnapshot {
            calls: self.ok.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            aborted: self.aborted.load(Ordering::Relaxed),
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us,
        }
    }
}

/// The bucket of a latency in microseconds.
fn bucket_of(us: u64) -> usize {
    if us < LINEAR_LIMIT {
        return us as usize;
    }
    let exponent = 63 - us.leading_zeros(); // >= 4
    let sub = (us >> (exponent - SUB_BITS)) & (SUB_BUCKETS - 1);
    (LINEAR_LIMIT + u64::from(exponent - 4) * SUB_BUCKETS + sub) as usize
}

/// The largest latency that falls in `bucket`.
fn bucket_upper_bound(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < LINEAR_LIMIT {
        return bucket;
    }
    let exponent = (bucket - LINEAR_LIMIT) / SUB_BUCKETS + 4;
    let sub = (bucket - LINEAR_LIMIT) % SUB_BUCKETS;
    let width = 1u64 << (exponent - u64::from(SUB_BITS));
    let start = (1u64 << exponent) + sub * width;
    start.saturating_add(width - 1)
}

/// The upper bound of the bucket holding quantile `q` of the recorded values.
fn percentile(counts: &[u64], q: f64) -> u64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0;
    }
    // The rank of the q-quantile, 1-based: the smallest value with at least q of the calls
    // at or below it.
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (bucket, &count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return bucket_upper_bound(bucket);
        }
    }
    bucket_upper_bound(counts.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order_and_within_an_eighth() {
        let mut previous = 0;
        for us in (0..5000u64).chain([1 << 20, (1 << 40) + 12345, u64::MAX]) {
            let bucket = bucket_of(us);
            assert!(bucket < BUCKETS, "{us} -> {bucket}");
            assert!(bucket >= previous || us > 5000, "buckets are monotonic");
            previous = bucket;
            let upper = bucket_upper_bound(bucket);
            assert!(upper >= us, "{us} <= upper bound {upper}");
            assert!(
                upper - us <= us / 8,
                "{us}: bucket bound {upper} is within 12.5% above"
            );
        }
    }

    #[test]
    fn percentiles_of_known_distributions() {
        let stats = MethodStats::default();
        for us in 1..=1000u64 {
            stats.record(Duration::from_micros(us), Outcome::Ok);
        }
        stats.record(Duration::from_micros(7), Outcome::Error);
        let s = stats.snapshot();
        assert_eq!((s.calls, s.errors, s.aborted), (1000, 1, 0));
        // True p50 is 500, p90 900, p99 990: bucket bounds are at most 12.5% above.
        for (got, truth) in [(s.p50_us, 500), (s.p90_us, 900), (s.p99_us, 990)] {
            assert!(got >= truth && got <= truth + truth / 8, "{got} vs {truth}");
        }
        assert_eq!(s.max_us, 1000);
        assert!(s.p999_us <= s.max_us);
    }

    #[test]
    fn outcomes_are_counted_apart() {
        let stats = MethodStats::default();
        stats.record(Duration::from_micros(3), Outcome::Aborted);
        stats.record(Duration::from_micros(3), Outcome::Ok);
        stats.record(Duration::from_micros(3), Outcome::Error);
        stats.record(Duration::from_micros(3), Outcome::Error);
        let s = stats.snapshot();
        assert_eq!((s.calls, s.errors, s.aborted), (1, 2, 1));
    }

    #[test]
    fn no_calls_no_percentiles() {
        let s = MethodStats::default().snapshot();
        assert_eq!(
            s,
            MethodSnapshot {
                calls: 0,
                errors: 0,
                aborted: 0,
                p50_us: 0,
                p90_us: 0,
                p99_us: 0,
                p999_us: 0,
                max_us: 0
            }
        );
    }
}
