//! Timing of echo calls, shared by every system: a sequential pass (one call at a time) and
//! a pipelined pass (a fixed number in flight), each bounded in count and duration, with
//! every call's latency in an HDR histogram.

use std::collections::VecDeque;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;

use crate::Error;

/// Longest one call may take before the run is declared broken.
pub(crate) const CALL_LIMIT: Duration = Duration::from_secs(10);
/// Latencies above this are clamped into the histogram's last bucket.
const MAX_RECORDED_NS: u64 = 60_000_000_000;

/// How much one pass measures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pass {
    /// Calls in flight at once (1: sequential round trips).
    pub(crate) in_flight: usize,
    /// Measured calls; the pass also stops at `duration`.
    pub(crate) count: u64,
    /// Longest measuring time.
    pub(crate) duration: Duration,
}

/// What one pass measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) calls: u64,
    pub(crate) calls_per_sec: f64,
    pub(crate) p50_us: f64,
    pub(crate) p99_us: f64,
}

/// Awaits `future` for at most [`CALL_LIMIT`].
pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> Result<T, Error> {
    tokio::time::timeout(CALL_LIMIT, future)
        .await
        .map_err(|_| Error::Timeout(format!("{what} took longer than {CALL_LIMIT:?}")))
}

/// Runs `warmup` sequential calls, unmeasured.
pub(crate) async fn warm_up<F, Fut>(call: &F, warmup: u64) -> Result<(), Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    for _ in 0..warmup {
        within("a warm-up call", call()).await??;
    }
    Ok(())
}

/// Keeps `pass.in_flight` independent calls of `call` running until the count or the
/// duration is reached; for clients that multiplex concurrent calls themselves.
pub(crate) async fn concurrent<F, Fut>(call: &F, pass: Pass) -> Result<Sample, Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    let timed = || async {
        let started = Instant::now();
        within("a call", call()).await??;
        Ok::<Duration, Error>(started.elapsed())
    };
    let mut histogram = new_histogram();
    let started = Instant::now();
    let stop_at = started + pass.duration;
    let mut running = FuturesUnordered::new();
    let mut issued = 0u64;
    while issued < pass.count.min(pass.in_flight as u64) {
        running.push(timed());
        issued += 1;
    }
    while let Some(latency) = running.next().await {
        record(&mut histogram, latency?);
        if issued < pass.count && Instant::now() < stop_at {
            running.push(timed());
            issued += 1;
        }
    }
    Ok(sample(&histogram, started.elapsed()))
}

/// A connection that answers requests in order (a DEALER talking to one echo ROUTER).
pub(crate) trait InOrder {
    /// Sends one request.
    async fn send(&mut self) -> Result<(), Error>;
    /// Receives the oldest outstanding reply.
    async fn receive(&mut self) -> Result<(), Error>;
}

/// Sends keep `pass.in_flight` requests ahead of the replies on an in-order connection, and
/// a FIFO of send times gives each reply's latency.
pub(crate) async fn in_order(connection: &mut impl InOrder, pass: Pass) -> Result<Sample, Error> {
    let mut histogram = new_histogram();
    let mut sent_at = VecDeque::with_capacity(pass.in_flight);
    let started = Instant::now();
    let stop_at = started + pass.duration;
    let mut issued = 0u64;
    while issued < pass.count.min(pass.in_flight as u64) {
        sent_at.push_back(Instant::now());
        within("a send", connection.send()).await??;
        issued += 1;
    }
    while let Some(sent) = sent_at.pop_front() {
        within("a reply", connection.receive()).await??;
        record(&mut histogram, sent.elapsed());
        if issued < pass.count && Instant::now() < stop_at {
            sent_at.push_back(Instant::now());
            within("a send", connection.send()).await??;
            issued += 1;
        }
    }
    Ok(sample(&histogram, started.elapsed()))
}

fn sample(histogram: &Histogram<u64>, elapsed: Duration) -> Sample {
    let us = |ns: u64| ns as f64 / 1e3;
    let calls = histogram.len();
    let seconds = elapsed.as_secs_f64();
    Sample {
        calls,
        calls_per_sec: if seconds > 0.0 {
            calls as f64 / seconds
        } else {
            0.0
        },
        p50_us: us(histogram.value_at_quantile(0.50)),
        p99_us: us(histogram.value_at_quantile(0.99)),
    }
}

fn new_histogram() -> Histogram<u64> {
    // 3 significant digits from 1 ns to a minute: about 0.1% resolution everywhere.
    Histogram::new_with_bounds(1, MAX_RECORDED_NS, 3).expect("constant histogram bounds are valid")
}

fn record(histogram: &mut Histogram<u64>, latency: Duration) {
    let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
    histogram.saturating_record(ns.clamp(1, MAX_RECORDED_NS));
}
