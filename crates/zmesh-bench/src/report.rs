//! What a run reports per mode, in the shape its JSON output has: [`Figures`] (calls, rate,
//! percentiles in microseconds) and [`VsBaseline`] (ratios to the raw baseline); and the
//! tokio runtime [`Flavour`] client and servers run on.

use std::time::Duration;

use serde::Serialize;

use crate::latency::{Latencies, micros, ratio};

/// The figures of one measured mode. Field names are those of `zmesh bench --json`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Figures {
    /// Measured calls.
    pub calls: u64,
    /// Wall time of the measured blocks.
    pub seconds: f64,
    /// `calls / seconds` (0 when nothing was measured).
    pub calls_per_sec: f64,
    /// Median latency.
    pub p50_us: f64,
    /// 90th percentile latency.
    pub p90_us: f64,
    /// 99th percentile latency.
    pub p99_us: f64,
    /// 99.9th percentile latency.
    pub p999_us: f64,
    /// Largest latency.
    pub max_us: f64,
}

impl Figures {
    /// The figures of `latencies` recorded over `elapsed` of measuring.
    pub fn new(latencies: &Latencies, elapsed: Duration) -> Self {
        let calls = latencies.len();
        let seconds = elapsed.as_secs_f64();
        Self {
            calls,
            seconds,
            calls_per_sec: if seconds > 0.0 {
                calls as f64 / seconds
            } else {
                0.0
            },
            p50_us: micros(latencies.p50()),
            p90_us: micros(latencies.p90()),
            p99_us: micros(latencies.p99()),
            p999_us: micros(latencies.p999()),
            max_us: micros(latencies.max()),
        }
    }
}

/// A mode's figures relative to the baseline's (raw zeromq) of the same run; `None` without
/// a baseline or when the baseline measured nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct VsBaseline {
    /// p50 over the baseline's p50.
    pub p50_vs_raw: Option<f64>,
    /// Throughput over the baseline's.
    pub calls_per_sec_vs_raw: Option<f64>,
}

impl VsBaseline {
    /// `figures` relative to `base`.
    pub fn of(figures: &Figures, base: &Figures) -> Self {
        Self {
            p50_vs_raw: ratio(figures.p50_us, base.p50_us),
            calls_per_sec_vs_raw: ratio(figures.calls_per_sec, base.calls_per_sec),
        }
    }
}

/// The tokio runtime flavour of a bench's client and of every server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flavour {
    /// One `current_thread` runtime per process.
    CurrentThread,
    /// A multi-thread runtime of 2 workers per process.
    MultiThread,
}

/// Workers of the multi-thread flavour: one per CPU of the 2-CPU machines the figures are
/// taken on.
pub const MULTI_THREAD_WORKERS: usize = 2;

impl Flavour {
    /// A runtime of this flavour, with IO and time enabled.
    pub fn runtime(self) -> std::io::Result<tokio::runtime::Runtime> {
        match self {
            Self::CurrentThread => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            Self::MultiThread => Self::multi_thread_builder().build(),
        }
    }

    /// The builder of the multi-thread flavour: [`MULTI_THREAD_WORKERS`] workers, IO and time
    /// enabled (for callers that also name or unpin its threads).
    pub fn multi_thread_builder() -> tokio::runtime::Builder {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(MULTI_THREAD_WORKERS).enable_all();
        builder
    }

    /// Runs `work` where this flavour's client work runs: inline in the `block_on` future
    /// (`current_thread`) or in a task spawned on a worker (multi-thread, where the
    /// `block_on` future runs on the calling thread, outside the worker pool).
    pub async fn run<T: Send + 'static>(
        self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        match self {
            Self::CurrentThread => work.await,
            Self::MultiThread => tokio::spawn(work).await.expect("a bench task panicked"),
        }
    }

    /// The name on the command line (`--runtime`), as reports print it.
    pub fn arg(self) -> &'static str {
        match self {
            Self::CurrentThread => "current-thread",
            Self::MultiThread => "multi-thread",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(calls: u64, us: u64, elapsed: Duration) -> Figures {
        let mut latencies = Latencies::new();
        for _ in 0..calls {
            latencies.record(Duration::from_micros(us));
        }
        Figures::new(&latencies, elapsed)
    }

    #[test]
    fn figures_serialize_in_the_order_zmesh_bench_prints() {
        let json =
            serde_json::to_string(&figures(10, 20, Duration::from_millis(1))).expect("serializes");
        let keys: Vec<&str> = json.split('"').skip(1).step_by(2).collect();
        assert_eq!(
            keys,
            [
                "calls",
                "seconds",
                "calls_per_sec",
                "p50_us",
                "p90_us",
                "p99_us",
                "p999_us",
                "max_us"
            ]
        );
    }

    #[test]
    fn ratios_to_the_baseline() {
        let raw = figures(100, 20, Duration::from_secs(1));
        let slower = figures(50, 30, Duration::from_secs(1));
        let vs = VsBaseline::of(&slower, &raw);
        assert!(
            (vs.p50_vs_raw.expect("a ratio") - 1.5).abs() < 0.01,
            "{vs:?}"
        );
        assert_eq!(vs.calls_per_sec_vs_raw, Some(0.5));
        assert_eq!(
            VsBaseline::of(&raw, &raw),
            VsBaseline {
                p50_vs_raw: Some(1.0),
                calls_per_sec_vs_raw: Some(1.0)
            }
        );
        let nothing = figures(0, 0, Duration::ZERO);
        assert_eq!(VsBaseline::of(&raw, &nothing), VsBaseline::default());
    }
}
