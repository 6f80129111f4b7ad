//! Keeps per-method call statistics on the hot path: completed, failed and aborted counts,
//! an HDR latency histogram (`hdrhistogram`, 2 significant digits: the percentiles of the
//! `_zmesh.stats` built-in and `zmesh stats`) and the OpenTelemetry RPC conventions'
//! duration buckets with the sum (the `rpc.server.call.duration` histogram that `metrics`
//! exports), so both read the same calls.
//!
//! An HDR histogram records through `&mut`, so each method's figures are split in a few
//! shards, each behind its own mutex: a thread records into the shard of its index, so
//! the runtime's worker threads do not contend, and a lock held for a handful of
//! additions costs about what the atomic counters it replaces did. A snapshot adds the
//! shards up. A shard allocates its histogram (about 30 KB) when it first records.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency the histogram tells apart: one hour (longer calls count as an hour).
const HIGHEST_US: u64 = 3_600_000_000;
/// Significant digits the histogram keeps: values within 1% of each other may share a
/// bucket.
const SIGNIFICANT_DIGITS: u8 = 2;
/// Most shards per method: more than the worker threads a node usually runs buys nothing.
const MAX_SHARDS: usize = 8;

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
    shards: Box<[Mutex<Shard>]>,
    /// Failed calls by `error.type` (the error's name on the wire): the failure path only.
    errors_by_type: Mutex<BTreeMap<String, u64>>,
}

/// One shard's figures.
#[derive(Debug, Default)]
struct Shard {
    ok: u64,
    errors: u64,
    aborted: u64,
    /// Every recorded latency in microseconds; `None` until the shard first records.
    latencies: Option<Histogram<u64>>,
    /// Calls per conventions bucket (not cumulative); the last one is above 10 s. Exact
    /// counts, as Prometheus' `le` buckets are (the HDR buckets may straddle a bound).
    semconv: [u64; 15],
    /// The sum of every recorded duration, in microseconds.
    sum_us: u64,
    /// The longest call, exact (the histogram's own maximum is rounded to its bucket).
    max_us: u64,
}

impl Default for MethodStats {
    fn default() -> Self {
        let shards = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .clamp(1, MAX_SHARDS);
        Self {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            errors_by_type: Mutex::new(BTreeMap::new()),
        }
    }
}

/// A new histogram with the module's bounds.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, SIGNIFICANT_DIGITS).expect(
        "constant bounds that new_with_bounds accepts: 1 <= low, high >= 2 low, digits <= 5",
    )
}

/// The shard index of the current thread, fixed when the thread first records.
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|index| *index)
}

/// A shard's lock; a panic while it was held left plain counters, still meaningful.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
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

/// Figures of one method at one moment. Percentiles are the HDR histogram's (within 1% of
/// the true value), in microseconds; 0 when no call has finished.
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
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        // Nearly every call is under the first bound: the scan ends at once.
        let at = SEMCONV_BOUNDS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(SEMCONV_BOUNDS_US.len());
        let mut shard = lock(&self.shards[thread_index() % self.shards.len()]);
        match outcome {
            Outcome::Ok => shard.ok += 1,
            Outcome::Error => shard.errors += 1,
            Outcome::Aborted => shard.aborted += 1,
        }
        shard
            .latencies
            .get_or_insert_with(histogram)
            .saturating_record(us.clamp(1, HIGHEST_US));
        shard.semconv[at] += 1;
        shard.sum_us = shard.sum_us.saturating_add(us);
        shard.max_us = shard.max_us.max(us);
    }

    /// Counts a failed call by its `error.type` (the outcome itself is [`record`]ed apart).
    ///
    /// [`record`]: MethodStats::record
    pub(crate) fn count_error(&self, error_type: &str) {
        let mut errors = self
            .errors_by_type
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match errors.get_mut(error_type) {
            Some(count) => *count += 1,
            None => {
                errors.insert(error_type.to_owned(), 1);
            }
        }
    }

    /// Failed calls by `error.type`, in name order.
    pub(crate) fn errors_by_type(&self) -> Vec<(String, u64)> {
        let errors = self
            .errors_by_type
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        errors.iter().map(|(name, n)| (name.clone(), *n)).collect()
    }

    /// The shards added up (each read under its lock, one after the other).
    fn total(&self) -> Shard {
        let mut total = Shard::default();
        for shard in &self.shards[..] {
            let shard = lock(shard);
            total.ok += shard.ok;
            total.errors += shard.errors;
            total.aborted += shard.aborted;
            if let Some(latencies) = &shard.latencies {
                // Same bounds on both sides: adding cannot fail.
                let _ = total.latencies.get_or_insert_with(histogram).add(latencies);
            }
            for (sum, count) in total.semconv.iter_mut().zip(shard.semconv) {
                *sum += count;
            }
            total.sum_us = total.sum_us.saturating_add(shard.sum_us);
            total.max_us = total.max_us.max(shard.max_us);
        }
        total
    }

    /// The duration histogram in the conventions' buckets.
    pub(crate) fn durations(&self) -> DurationHistogram {
        let total = self.total();
        let bounds = SEMCONV_BOUNDS_S.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(total.semconv).collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        DurationHistogram {
            buckets,
            count,
            sum_s: total.sum_us as f64 / 1e6,
        }
    }

    /// The figures now.
    pub(crate) fn snapshot(&self) -> MethodSnapshot {
        let total = self.total();
        let latencies = total.latencies.filter(|h| !h.is_empty());
        let max_us = total.max_us;
        // The HDR value of a quantile is its bucket's highest equivalent value; never above
        // the largest call actually seen.
        let at = |q: f64| {
            latencies
                .as_ref()
                .map_or(0, |h| h.value_at_quantile(q).min(max_us))
        };
        MethodSnapshot {
            calls: total.ok,
            errors: total.errors,
            aborted: total.aborted,
            p50_us: at(0.50),
            p90_us: at(0.90),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_distributions() {
        let stats = MethodStats::default();
        for us in 1..=1000u64 {
            stats.record(Duration::from_micros(us), Outcome::Ok);
        }
        stats.record(Duration::from_micros(7), Outcome::Error);
        let s = stats.snapshot();
        assert_eq!((s.calls, s.errors, s.aborted), (1000, 1, 0));
        // True p50 is 500, p90 900, p99 990: the HDR histogram is within 1% above.
        for (got, truth) in [(s.p50_us, 500), (s.p90_us, 900), (s.p99_us, 990)] {
            assert!(
                got >= truth && got <= truth + truth / 100,
                "{got} vs {truth}"
            );
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

    /// Latencies recorded from several threads land in their shards and add up in one
    /// snapshot: every call counted once, the percentiles over all of them.
    #[test]
    fn calls_from_many_threads_add_up() {
        let stats = std::sync::Arc::new(MethodStats::default());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let stats = std::sync::Arc::clone(&stats);
                std::thread::spawn(move || {
                    for us in 1..=250u64 {
                        stats.record(Duration::from_micros(t * 250 + us), Outcome::Ok);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("the recording thread");
        }
        let s = stats.snapshot();
        assert_eq!(s.calls, 1000);
        assert_eq!(s.max_us, 1000);
        assert!(s.p50_us >= 500 && s.p50_us <= 505, "{}", s.p50_us);
        assert_eq!(stats.durations().count, 1000);
    }

    /// A call longer than the histogram's range counts at its top, and exactly in the sum
    /// and the maximum.
    #[test]
    fn a_call_beyond_the_range_is_kept() {
        let stats = MethodStats::default();
        stats.record(Duration::from_secs(2 * 3600), Outcome::Ok);
        let s = stats.snapshot();
        assert_eq!(s.max_us, 7_200_000_000);
        assert!(s.p50_us >= HIGHEST_US, "{}", s.p50_us);
        assert!((stats.durations().sum_s - 7200.0).abs() < 1e-6);
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
