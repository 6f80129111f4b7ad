//! Keeps per-method call statistics cheaply on the hot path: completed, failed and aborted
//! counts, a lock-free log-linear latency histogram (percentiles for the `_zmesh.stats`
//! built-in) and the OpenTelemetry RPC conventions' duration buckets with the sum (the
//! `rpc.server.call.duration` histogram that `metrics` exports); all plain atomics.

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

/// The bucket bounds, in seconds, the OpenTelemetry semantic conventions give
/// `rpc.server.call.duration` and `rpc.client.call.duration` (their explicit bucket
/// boundaries in the RPC metrics conventions, semconv v1.45).
pub(crate) const SEMCONV_BOUNDS_S: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// [`SEMCONV_BOUNDS_S`] in microseconds, for the hot path's comparisons.
const SEMCONV_BOUNDS_US: [u64; 14] = [
    5_000, 10_000, 25_000, 50_000, 75_000, 100_000, 250_000, 500_000, 750_000, 1_000_000,
    2_500_000, 5_000_000, 7_500_000, 10_000_000,
];

/// The statistics of one method, shared by every name it is exported under.
#[derive(Debug)]
pub(crate) struct MethodStats {
    ok: AtomicU64,
    errors: AtomicU64,
    aborted: AtomicU64,
    max_us: AtomicU64,
    buckets: Box<[AtomicU64]>,
    /// Calls per conventions bucket (not cumulative); the last one is above 10 s.
    semconv: [AtomicU64; 15],
    /// The sum of every recorded duration, in microseconds.
    sum_us: AtomicU64,
}

impl Default for MethodStats {
    fn default() -> Self {
        Self {
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            semconv: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

/// A method's duration histogram in the conventions' buckets: the calls in each bucket
/// (not cumulative: the exposition adds them up into Prometheus' `le` counts) by upper bound
/// in seconds, ending with infinity; the total and the sum in seconds.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DurationHistogram {
    pub(crate) buckets: Vec<(f64, u64)>,
    pub(crate) count: u64,
    pub(crate) sum_s: f64,
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
        // Nearly every call is under the first bound: the scan ends at once.
        let at = SEMCONV_BOUNDS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(SEMCONV_BOUNDS_US.len());
        self.semconv[at].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// The duration histogram in the conventions' buckets (read bucket by bucket, so one
    /// taken during traffic may miss the calls that finished while it was read).
    pub(crate) fn durations(&self) -> DurationHistogram {
        let bounds = SEMCONV_BOUNDS_S.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.semconv)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        DurationHistogram {
            buckets,
            count,
            sum_s: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
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

    /// Each duration lands in the first conventions bucket whose bound it does not exceed;
    /// the counts come out cumulative, with the total and the sum.
    #[test]
    fn durations_fill_the_conventions_buckets() {
        let stats = MethodStats::default();
        for us in [40, 5_000, 5_001, 80_000, 12_000_000] {
            stats.record(Duration::from_micros(us), Outcome::Ok);
        }
        let h = stats.durations();
        assert_eq!(h.count, 5);
        assert!((h.sum_s - 12.090041).abs() < 1e-9, "{}", h.sum_s);
        // Cumulative, as Prometheus' `le` counts are.
        let le = |bound: f64| -> u64 {
            h.buckets
                .iter()
                .take_while(|(b, _)| *b <= bound)
                .map(|(_, n)| n)
                .sum()
        };
        assert_eq!(le(0.005), 2, "40 us and exactly 5 ms");
        assert_eq!(le(0.01), 3);
        assert_eq!(le(0.075), 3);
        assert_eq!(le(0.1), 4);
        assert_eq!(le(10.0), 4, "12 s is above every bound");
        assert_eq!(le(f64::INFINITY), 5, "+Inf holds every call");
        assert_eq!(h.buckets.len(), SEMCONV_BOUNDS_S.len() + 1);
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
