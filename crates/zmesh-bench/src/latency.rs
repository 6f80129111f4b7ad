//! Latencies of one measured mode: every call's time in an HDR histogram (3 significant
//! digits, about 0.1% resolution from 1 ns to a minute), read back as percentiles; and the
//! ratio helper every comparison prints with.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latencies above this are clamped into the histogram's last bucket.
const MAX_RECORDED_NS: u64 = 60_000_000_000;

/// Every recorded latency of one mode.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// No latencies yet.
    pub fn new() -> Self {
        let histogram = Histogram::new_with_bounds(1, MAX_RECORDED_NS, 3)
            .expect("constant histogram bounds are valid");
        Self { histogram }
    }

    /// Records one latency (clamped to 1 ns .. 60 s).
    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.histogram
            .saturating_record(ns.clamp(1, MAX_RECORDED_NS));
    }

    /// How many latencies were recorded.
    pub fn len(&self) -> u64 {
        self.histogram.len()
    }

    /// True before the first [`record`](Self::record).
    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    /// The latency at `percentile` (0 to 100); zero when empty.
    pub fn at_percentile(&self, percentile: f64) -> Duration {
        Duration::from_nanos(self.histogram.value_at_percentile(percentile))
    }

    /// The latency at `quantile` (0 to 1); zero when empty. The named percentiles below use
    /// this with exact quantiles: `99.9 / 100` is a hair above 0.999 in floating point,
    /// enough to move p99.9 of 1000 calls up a rank.
    pub fn at_quantile(&self, quantile: f64) -> Duration {
        Duration::from_nanos(self.histogram.value_at_quantile(quantile))
    }

    /// The median.
    pub fn p50(&self) -> Duration {
        self.at_quantile(0.5)
    }

    /// The 90th percentile.
    pub fn p90(&self) -> Duration {
        self.at_quantile(0.9)
    }

    /// The 99th percentile.
    pub fn p99(&self) -> Duration {
        self.at_quantile(0.99)
    }

    /// The 99.9th percentile.
    pub fn p999(&self) -> Duration {
        self.at_quantile(0.999)
    }

    /// The 99.99th percentile.
    pub fn p9999(&self) -> Duration {
        self.at_quantile(0.9999)
    }

    /// The largest latency recorded (within the histogram's resolution).
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.histogram.max())
    }

    /// Adds every latency of `other` (the shares of a block measured apart, one per task).
    pub fn merge(&mut self, other: &Self) {
        // Both histograms have the same bounds (`new`), so adding cannot fail.
        self.histogram
            .add(&other.histogram)
            .expect("latency histograms share their bounds");
    }

    /// The histogram itself, for walking its buckets.
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.histogram
    }
}

/// `duration` in microseconds, the unit every report prints.
pub fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// `value / base`, or `None` when the base is not a positive number (a baseline that
/// measured nothing gives no ratio rather than `inf` or `NaN`).
pub fn ratio(value: f64, base: f64) -> Option<f64> {
    (base > 0.0 && value.is_finite()).then(|| value / base)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_spread() {
        let mut latencies = Latencies::new();
        for us in 1..=1000u64 {
            latencies.record(Duration::from_micros(us));
        }
        assert_eq!(latencies.len(), 1000);
        let close = |d: Duration, us: f64| (micros(d) - us).abs() <= us * 0.001 + 0.001;
        assert!(close(latencies.p50(), 500.0), "{:?}", latencies.p50());
        assert!(close(latencies.p90(), 900.0), "{:?}", latencies.p90());
        assert!(close(latencies.p99(), 990.0), "{:?}", latencies.p99());
        assert!(close(latencies.p999(), 999.0), "{:?}", latencies.p999());
        assert!(close(latencies.p9999(), 1000.0), "{:?}", latencies.p9999());
        assert!(close(latencies.max(), 1000.0), "{:?}", latencies.max());
    }

    #[test]
    fn out_of_range_latencies_are_clamped_not_lost() {
        let mut latencies = Latencies::new();
        latencies.record(Duration::ZERO);
        latencies.record(Duration::from_secs(3600));
        assert_eq!(latencies.len(), 2);
        assert!(latencies.max() >= Duration::from_secs(59));
        assert!(latencies.at_percentile(0.0) <= Duration::from_nanos(1));
    }

    #[test]
    fn empty_latencies_read_as_zero() {
        let latencies = Latencies::default();
        assert!(latencies.is_empty());
        assert_eq!(latencies.p50(), Duration::ZERO);
        assert_eq!(latencies.max(), Duration::ZERO);
    }

    #[test]
    fn a_ratio_needs_a_positive_base() {
        assert_eq!(ratio(3.0, 2.0), Some(1.5));
        assert_eq!(ratio(3.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 2.0), None);
        assert_eq!(ratio(0.0, 2.0), Some(0.0));
    }
}
